package pooltest

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc"
)

// TestNotInTheBinary: the simulated GPU is for benchmarks only; the
// gpumesh binary (serve included) does not link this package.
func TestNotInTheBinary(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH to list the binary's packages")
	}
	out, err := exec.CommandContext(t.Context(), gobin, "list", "-deps", "github.com/gpumesh/gpumesh/cmd/gpumesh").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "github.com/gpumesh/gpumesh/pool/pooltest") {
		t.Error("cmd/gpumesh depends on pool/pooltest, the simulated GPU")
	}
}

func TestSim(t *testing.T) {
	s := NewSim(time.Millisecond, 1)
	ctx := context.Background()
	out, err := s.Compute(ctx, gpusvc.Call{Kernel: "relu", OutShape: []int64{2, 3}})
	if err != nil || len(out.Float32s()) != 6 || s.Calls() != 1 {
		t.Fatalf("Compute = %+v, %v; calls %d", out, err, s.Calls())
	}
	// A call waiting for the slot gives up with its context.
	hold, cancel := context.WithCancel(ctx)
	s.slots <- struct{}{}
	done := make(chan error, 1)
	go func() { _, err := s.Compute(hold, gpusvc.Call{Kernel: "relu"}); done <- err }()
	cancel()
	if err := <-done; err == nil {
		t.Error("a call waiting for a busy simulated GPU ignored its context")
	}
	<-s.slots
	h, err := s.Alloc(ctx, 0, 4)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.WriteAt(ctx, h, 1, []byte{7, 8}); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 4)
	if err := s.ReadAt(ctx, h, 0, p); err != nil || p[1] != 7 || p[2] != 8 {
		t.Errorf("read back %v, %v", p, err)
	}
	if err := s.WriteAt(ctx, h, 3, []byte{1, 2}); err == nil {
		t.Error("a write past the buffer's end succeeded")
	}
	if err := s.Free(ctx, h); err != nil || s.Free(ctx, h) == nil {
		t.Errorf("free: %v, or a second free of the same buffer succeeded", err)
	}
}
