//go:build cuda

package cuda

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"gorgonia.org/cu"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
)

// Callers' own modules: PTX, or CUDA C compiled with NVRTC, cached by the
// hash of their source, and launched on the session's stream.

// LoadModule loads PTX, or CUDA C compiled with NVRTC for this GPU's
// architecture. Modules are cached by the hash of their source.
func (b *Backend) LoadModule(_ context.Context, gpu int, src gpusvc.ModuleSource) (id, log string, cached bool, err error) {
	if err := b.checkGPU(gpu); err != nil {
		return "", "", false, err
	}
	h := sha256.New()
	if src.CUDA != "" {
		h.Write([]byte("cuda\x00" + src.CUDA))
	} else {
		h.Write([]byte("ptx\x00"))
		h.Write(src.PTX)
	}
	id = hex.EncodeToString(h.Sum(nil))[:32]
	b.mu.Lock()
	_, cached = b.modules[id]
	b.mu.Unlock()
	if cached {
		return id, "", true, nil
	}
	ptx := src.PTX
	if src.CUDA != "" {
		if b.nvrtc == nil {
			return "", "", false, fmt.Errorf("cuda: CUDA C needs NVRTC, and this host has %s: %w", b.static.NVRTC, gpusvc.ErrUnsupported)
		}
		ptx, log, err = b.nvrtc.Compile(src.CUDA, "module.cu", "--gpu-architecture="+b.arch, "-default-device")
		if err != nil && strings.Contains(err.Error(), "INVALID_OPTION") {
			// An NVRTC older than the GPU: compile for a common base; the driver JITs it.
			ptx, log, err = b.nvrtc.Compile(src.CUDA, "module.cu", "--gpu-architecture=compute_60", "-default-device")
		}
		if err != nil {
			return "", log, false, fmt.Errorf("cuda: compile: %v: %w", err, kernel.ErrInvalid)
		}
	}
	errLog := &cu.JITErrorLogBuffer{Buffer: make([]byte, 16<<10)}
	var m cu.Module
	err = b.do(func() (err error) {
		m, err = cu.LoadDataEx(string(ptx), errLog)
		return err
	})
	if err != nil {
		jl := strings.TrimRight(string(errLog.Buffer), "\x00")
		return "", strings.TrimSpace(log + "\n" + jl), false, fmt.Errorf("cuda: load module: %w", err)
	}
	b.mu.Lock()
	_, dup := b.modules[id]
	if !dup {
		b.modules[id] = m
	}
	b.mu.Unlock()
	if dup { // loaded concurrently: keep the first
		b.do(func() error { return m.Unload() })
		return id, log, true, nil
	}
	return id, log, false, nil
}

// Launch runs a function of a loaded module on the session's stream and
// waits for it. Buffers are passed as device pointers, Scalar as a 32-bit
// float, Int as a 64-bit integer (its low half serves an int parameter);
// an inline tensor is uploaded to a temporary freed after the launch.
func (b *Backend) Launch(ctx context.Context, l gpusvc.Launch) error {
	if err := b.checkGPU(l.GPU); err != nil {
		return err
	}
	b.mu.Lock()
	m, ok := b.modules[l.Module]
	b.mu.Unlock()
	if !ok {
		return fmt.Errorf("cuda: module %q is not loaded: %w", l.Module, kernel.ErrInvalid)
	}
	return b.do(func() error {
		fn, err := m.Function(l.Function)
		if err != nil {
			return fmt.Errorf("cuda: function %q: %w", l.Function, err)
		}
		st, err := b.stream(gpusvc.SessionID(ctx))
		if err != nil {
			return err
		}
		ptrs, free, err := b.operands(st, l.Args)
		if err != nil {
			return err
		}
		defer free()
		var p params
		for i, a := range l.Args {
			switch a.Kind {
			case kernel.ArgBuffer, kernel.ArgTensor:
				p.ptr(ptrs[i])
			case kernel.ArgScalar:
				p.f32(float32(a.Scalar))
			case kernel.ArgInt:
				p.i64(a.Int)
			}
		}
		g, bl := l.Grid, l.Block
		if err := fn.Launch(int(g[0]), int(g[1]), int(g[2]), int(bl[0]), int(bl[1]), int(bl[2]), int(l.SharedMemBytes), st, p.pointers()); err != nil {
			return err
		}
		return st.Synchronize()
	})
}
