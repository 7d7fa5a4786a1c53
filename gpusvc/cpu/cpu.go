// Package cpu is the portable gpumesh backend: the built-in kernels computed
// on the host's CPU cores, and buffers in host memory. It is the default
// everywhere and the reference the CUDA backend is checked against.
package cpu

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"sync"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
)

// Backend computes on the CPU. The zero value is not usable; call New.
type Backend struct {
	workers int

	mu      sync.Mutex
	buffers map[uint64][]byte // guarded by mu
	next    uint64            // guarded by mu
	held    int64             // bytes in buffers; guarded by mu
}

var (
	_ gpusvc.Backend = (*Backend)(nil)
	_ gpusvc.Memory  = (*Backend)(nil)
)

// New returns a CPU backend using up to GOMAXPROCS cores per call.
func New() *Backend {
	return &Backend{workers: runtime.GOMAXPROCS(0), buffers: make(map[uint64][]byte)}
}

// Info reports one pseudo-device: the host's CPUs.
func (b *Backend) Info(context.Context) gpusvc.Info {
	b.mu.Lock()
	held := b.held
	b.mu.Unlock()
	return gpusvc.Info{
		Backend: "cpu",
		Devices: []gpusvc.Device{{
			Index:      0,
			Name:       fmt.Sprintf("CPU (%d cores, %s/%s)", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH),
			MemoryUsed: uint64(held),
		}},
		Status: "cpu backend: built-in kernels on the host's cores",
	}
}

// Close frees every buffer.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for h, buf := range b.buffers {
		clear(buf)
		delete(b.buffers, h)
	}
	b.held = 0
	return nil
}

// Compute runs a built-in kernel.
func (b *Backend) Compute(ctx context.Context, c gpusvc.Call) (kernel.Tensor, error) {
	if c.GPU != 0 {
		return kernel.Tensor{}, fmt.Errorf("cpu: gpu %d: %w (the cpu backend has device 0 only)", c.GPU, gpusvc.ErrNoDevice)
	}
	in := make([]kernel.Tensor, len(c.Args))
	for i, a := range c.Args {
		switch a.Kind {
		case kernel.ArgTensor:
			in[i] = a.Tensor
		case kernel.ArgBuffer:
			t, err := b.view(a)
			if err != nil {
				return kernel.Tensor{}, err
			}
			in[i] = t
		}
	}
	for _, t := range in {
		if t.Data != nil && t.DType != kernel.Float32 {
			return kernel.Tensor{}, fmt.Errorf("cpu: %s: %s tensors need a CUDA host: %w", c.Kernel, t.DType, gpusvc.ErrUnsupported)
		}
	}
	n, ok := elems(c.OutShape)
	if !ok {
		return kernel.Tensor{}, fmt.Errorf("cpu: %s: output %v is over %d elements: %w", c.Kernel, c.OutShape, maxOutElems, kernel.ErrInvalid)
	}
	out := make([]float32, n)
	switch c.Kernel {
	case "matrix_mul":
		a, bb := in[0], in[1]
		if err := MatMulContext(ctx, out, a.Float32s(), bb.Float32s(), int(a.Shape[0]), int(a.Shape[1]), int(bb.Shape[1]), b.workers); err != nil {
			return kernel.Tensor{}, err
		}
	case "saxpy":
		alpha := float32(c.Args[0].Scalar)
		if c.Args[0].Kind == kernel.ArgInt {
			alpha = float32(c.Args[0].Int)
		}
		Saxpy(out, alpha, in[1].Float32s(), in[2].Float32s())
	case "reduce_sum":
		out[0] = ReduceSum(in[0].Float32s())
	case "softmax":
		x := in[0]
		Softmax(out, x.Float32s(), int(x.Shape[len(x.Shape)-1]))
	case "relu":
		ReLU(out, in[0].Float32s())
	case "transpose":
		a := in[0]
		Transpose(out, a.Float32s(), int(a.Shape[0]), int(a.Shape[1]))
	default:
		return kernel.Tensor{}, fmt.Errorf("cpu: %w %q", kernel.ErrUnknownKernel, c.Kernel)
	}
	res := kernel.Tensor{DType: kernel.Float32, Shape: c.OutShape, Data: kernel.Float32Bytes(out)}
	if c.Out != 0 {
		if err := b.WriteAt(ctx, c.Out, 0, res.Data); err != nil {
			return kernel.Tensor{}, err
		}
		return kernel.Tensor{DType: kernel.Float32, Shape: c.OutShape}, nil
	}
	return res, nil
}

// maxOutElems bounds an output the backend allocates, whoever asks: the
// server bounds outputs by its own limits first (a 2^22×1 by 1×2^22
// product once asked for 64 TiB here).
const maxOutElems = 1 << 31

// elems is the element count of shape, or false if it is over maxOutElems.
func elems(shape []int64) (int, bool) {
	n := int64(1)
	for _, d := range shape {
		if d <= 0 || n > maxOutElems/d {
			return 0, false
		}
		n *= d
	}
	return int(n), true
}

// view returns a buffer argument as a tensor over the buffer's bytes.
func (b *Backend) view(a kernel.Arg) (kernel.Tensor, error) {
	b.mu.Lock()
	buf, ok := b.buffers[a.Buffer]
	b.mu.Unlock()
	if !ok {
		return kernel.Tensor{}, fmt.Errorf("cpu: buffer %d: %w", a.Buffer, gpusvc.ErrNoBuffer)
	}
	t := a.Tensor
	need := t.Elems() * int64(t.DType.Size())
	if need > int64(len(buf)) {
		return kernel.Tensor{}, fmt.Errorf("cpu: buffer %d holds %d bytes; shape %v of %s needs %d: %w",
			a.Buffer, len(buf), t.Shape, t.DType, need, kernel.ErrInvalid)
	}
	t.Data = buf[:need]
	return t, nil
}

// Alloc reserves n zeroed bytes of host memory.
func (b *Backend) Alloc(_ context.Context, gpu int, n int64) (uint64, error) {
	if gpu != 0 {
		return 0, fmt.Errorf("cpu: gpu %d: %w", gpu, gpusvc.ErrNoDevice)
	}
	if n <= 0 || n > math.MaxInt32*4 {
		return 0, fmt.Errorf("cpu: alloc %d bytes: %w", n, kernel.ErrInvalid)
	}
	buf := make([]byte, n)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.next++
	b.buffers[b.next] = buf
	b.held += n
	return b.next, nil
}

// Free zeroes and releases a buffer.
func (b *Backend) Free(_ context.Context, h uint64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	buf, ok := b.buffers[h]
	if !ok {
		return fmt.Errorf("cpu: buffer %d: %w", h, gpusvc.ErrNoBuffer)
	}
	clear(buf)
	delete(b.buffers, h)
	b.held -= int64(len(buf))
	return nil
}

// WriteAt copies p into buffer h at off.
func (b *Backend) WriteAt(_ context.Context, h uint64, off int64, p []byte) error {
	b.mu.Lock()
	buf, ok := b.buffers[h]
	b.mu.Unlock()
	if !ok {
		return fmt.Errorf("cpu: buffer %d: %w", h, gpusvc.ErrNoBuffer)
	}
	if off < 0 || off+int64(len(p)) > int64(len(buf)) {
		return fmt.Errorf("cpu: write %d bytes at %d into a %d-byte buffer: %w", len(p), off, len(buf), kernel.ErrInvalid)
	}
	copy(buf[off:], p)
	return nil
}

// ReadAt copies from buffer h at off into p.
func (b *Backend) ReadAt(_ context.Context, h uint64, off int64, p []byte) error {
	b.mu.Lock()
	buf, ok := b.buffers[h]
	b.mu.Unlock()
	if !ok {
		return fmt.Errorf("cpu: buffer %d: %w", h, gpusvc.ErrNoBuffer)
	}
	if off < 0 || off+int64(len(p)) > int64(len(buf)) {
		return fmt.Errorf("cpu: read %d bytes at %d from a %d-byte buffer: %w", len(p), off, len(buf), kernel.ErrInvalid)
	}
	copy(p, buf[off:])
	return nil
}

// Buffers reports how many buffers are live and the bytes they hold.
func (b *Backend) Buffers() (n int, bytes int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.buffers), b.held
}
