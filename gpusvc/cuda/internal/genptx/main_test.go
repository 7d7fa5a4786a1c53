//go:build cuda

package main

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/gpumesh/gpumesh/gpusvc/cuda/nvrtc"
)

// builtins.ptx must be what builtins.cu compiles to, when the same NVRTC
// version that generated it is at hand.
func TestBuiltinsPTXIsFresh(t *testing.T) {
	lib, err := nvrtc.Open()
	if errors.Is(err, nvrtc.ErrNotFound) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	committed, err := os.ReadFile("../../builtins.ptx")
	if err != nil {
		t.Fatal(err)
	}
	head, body, _ := bytes.Cut(committed, []byte("\n"))
	if !strings.Contains(string(head), lib.Name()) {
		t.Skipf("builtins.ptx was made by another NVRTC (%s); this is %s", head, lib.Name())
	}
	src, err := os.ReadFile("../../builtins.cu")
	if err != nil {
		t.Fatal(err)
	}
	ptx, log, err := lib.Compile(string(src), "builtins.cu", "--gpu-architecture=compute_60", "-default-device")
	if err != nil {
		t.Fatalf("%v\n%s", err, log)
	}
	if !bytes.Equal(ptx, body) {
		t.Error("builtins.ptx is stale: go generate -tags cuda ./gpusvc/cuda")
	}
}
