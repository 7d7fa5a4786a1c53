// Package standin is the stand-in GPU worker's backend: the CPU backend
// behind the worker protocol, plus custom "kernels" that misbehave on
// purpose, so that CI can prove the supervision (a crash hurts only its
// caller, restarts, start failures) on machines without a GPU.
//
// It imports no GPU library.
package standin

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"sync"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/gpusvc/worker"
)

// Functions a stand-in module can launch, whatever its source:
const (
	// FuncExit makes the worker process exit at once with status 2, as a
	// segfaulting driver would: its calls in flight see the connection
	// break.
	FuncExit = "standin_exit"
	// FuncFault answers with worker.ErrFault, after which the worker
	// exits, as a CUDA kernel with an illegal address would.
	FuncFault = "standin_fault"
	// FuncBlock blocks until the call is cancelled or the process ends.
	FuncBlock = "standin_block"
	// FuncNop does nothing.
	FuncNop = "standin_nop"
)

// Backend is the stand-in backend.
type Backend struct {
	*cpu.Backend

	mu      sync.Mutex
	modules map[string]bool // guarded by mu
}

var (
	_ gpusvc.Backend = (*Backend)(nil)
	_ gpusvc.Memory  = (*Backend)(nil)
	_ gpusvc.Modules = (*Backend)(nil)
)

// New returns a stand-in backend.
func New() *Backend { return &Backend{Backend: cpu.New(), modules: make(map[string]bool)} }

// Info reports the CPU as the stand-in's one device.
func (b *Backend) Info(ctx context.Context) gpusvc.Info {
	info := b.Backend.Info(ctx)
	info.Backend = "stand-in"
	info.Status = fmt.Sprintf("stand-in worker (pid %d): built-in kernels on the CPU, test kernels %s, %s, %s",
		os.Getpid(), FuncExit, FuncFault, FuncBlock)
	info.NVRTC = "none (stand-in)"
	return info
}

// LoadModule accepts any source and names it by its hash.
func (b *Backend) LoadModule(_ context.Context, gpu int, src gpusvc.ModuleSource) (string, string, bool, error) {
	if gpu != 0 {
		return "", "", false, fmt.Errorf("standin: gpu %d: %w", gpu, gpusvc.ErrNoDevice)
	}
	h := sha256.New()
	h.Write(src.PTX)
	h.Write([]byte(src.CUDA))
	id := hex.EncodeToString(h.Sum(nil))[:16]
	b.mu.Lock()
	defer b.mu.Unlock()
	cached := b.modules[id]
	b.modules[id] = true
	return id, "stand-in: no compiler ran", cached, nil
}

// Launch runs one of the stand-in's test functions.
func (b *Backend) Launch(ctx context.Context, l gpusvc.Launch) error {
	b.mu.Lock()
	ok := b.modules[l.Module]
	b.mu.Unlock()
	if !ok {
		return fmt.Errorf("standin: module %q: %w", l.Module, kernel.ErrInvalid)
	}
	for _, a := range l.Args {
		if a.Kind == kernel.ArgBuffer {
			if err := b.ReadAt(ctx, a.Buffer, 0, nil); err != nil {
				return err
			}
		}
	}
	switch l.Function {
	case FuncExit:
		fmt.Fprintln(os.Stderr, "gpumesh-gpu: stand-in: exiting as asked by", FuncExit)
		os.Exit(2)
	case FuncFault:
		return fmt.Errorf("standin: %s: %w", l.Function, worker.ErrFault)
	case FuncBlock:
		<-ctx.Done()
		return ctx.Err()
	case FuncNop:
		return nil
	}
	return fmt.Errorf("standin: function %q: %w (have %s, %s, %s, %s)", l.Function, kernel.ErrInvalid, FuncExit, FuncFault, FuncBlock, FuncNop)
}
