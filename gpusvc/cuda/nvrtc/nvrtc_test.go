//go:build cuda

package nvrtc

import (
	"errors"
	"strings"
	"testing"
)

// NVRTC needs no GPU: these run wherever a libnvrtc is installed.
func TestCompile(t *testing.T) {
	lib, err := Open()
	if errors.Is(err, ErrNotFound) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("loaded %s", lib.Name())
	for _, tc := range []struct {
		name, src, want string
		err             error
	}{
		{"kernel", `extern "C" __global__ void add1(float* x, int n) { int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) x[i] += 1.0f; }`, ".entry add1", nil},
		{"syntax error", `extern "C" __global__ void broken( {`, "error", ErrCompile},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ptx, log, err := lib.Compile(tc.src, "t.cu", "--gpu-architecture=compute_60")
			if !errors.Is(err, tc.err) {
				t.Fatalf("err %v, want %v (log %s)", err, tc.err, log)
			}
			if !strings.Contains(string(ptx)+log, tc.want) {
				t.Errorf("ptx %q log %q lack %q", ptx, log, tc.want)
			}
		})
	}
	if _, _, err := lib.Compile("", "t.cu", "--no-such-option"); !errors.Is(err, ErrCompile) {
		t.Errorf("bad option: %v, want ErrCompile", err)
	}
}

func TestOpenNamesWhatItTried(t *testing.T) {
	_, err := Open("libnvrtc.so.999")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "libnvrtc.so.999") {
		t.Errorf("Open: %v", err)
	}
}
