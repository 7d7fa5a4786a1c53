//go:build cuda

// Package cuda is the NVIDIA GPU backend, run inside the gpumesh-gpu
// worker process (gpusvc/worker): one CUDA context for the worker's GPU, a
// stream per session, the built-in kernels as embedded PTX (builtins.cu,
// compiled with NVRTC into builtins.ptx at development time, JIT-compiled
// by the driver for the GPU at hand), callers' modules (PTX, or CUDA C
// compiled with NVRTC loaded at run time, see nvrtc) cached by content
// hash, and errors mapped to gpusvc's sentinels. A kernel fault loses the
// context: the call that saw it gets worker.ErrFault and so does every
// later one, and the worker exits.
//
// It imports gorgonia.org/cu, whose package init exits the process when
// cuInit fails: only the cuda-tagged gpumesh-gpu binary may link it.
package cuda

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"sync"
	"unsafe"

	"gorgonia.org/cu"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cuda/nvrtc"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/gpusvc/worker"
)

//go:generate go run -tags cuda ./internal/genptx builtins.cu builtins.ptx

//go:embed builtins.ptx
var builtinsPTX string

// maxStreams bounds the per-session streams a worker keeps.
const maxStreams = 64

// Backend drives one GPU. The zero value is not usable; call New.
type Backend struct {
	gpu      int
	dev      cu.Device
	ctx      cu.CUContext
	arch     string // compute_XY, for NVRTC
	static   gpusvc.Info
	nvrtc    *nvrtc.Lib // nil when none was found
	builtins cu.Module
	fns      map[string]cu.Function // built-in kernels by PTX name
	copy     cu.Stream              // WriteAt and ReadAt

	mu      sync.Mutex
	lost    error                // set by the first fault: the context is unusable; guarded by mu
	buffers map[uint64]devBuf    // guarded by mu
	next    uint64               // guarded by mu
	modules map[string]cu.Module // by content hash; guarded by mu
	streams map[uint64]cu.Stream // by session; guarded by mu
	order   []uint64             // sessions by stream creation, oldest first; guarded by mu
}

type devBuf struct {
	ptr  cu.DevicePtr
	size int64
}

var (
	_ gpusvc.Backend = (*Backend)(nil)
	_ gpusvc.Memory  = (*Backend)(nil)
	_ gpusvc.Modules = (*Backend)(nil)
)

// New creates a context on GPU gpu and loads the built-in kernels.
func New(gpu int) (_ *Backend, err error) {
	n, err := cu.NumDevices()
	if err != nil {
		return nil, fmt.Errorf("cuda: count devices: %w", err)
	}
	if n == 0 {
		return nil, errors.New("cuda: the driver sees no GPU")
	}
	if gpu < 0 || gpu >= n {
		return nil, fmt.Errorf("cuda: gpu %d: %w (this host has %d)", gpu, gpusvc.ErrNoDevice, n)
	}
	b := &Backend{
		gpu: gpu, fns: make(map[string]cu.Function), buffers: make(map[uint64]devBuf),
		modules: make(map[string]cu.Module), streams: make(map[uint64]cu.Stream),
	}
	if b.dev, err = cu.GetDevice(gpu); err != nil {
		return nil, fmt.Errorf("cuda: gpu %d: %w", gpu, err)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if b.ctx, err = b.dev.MakeContext(cu.SchedAuto); err != nil {
		return nil, fmt.Errorf("cuda: gpu %d: create context: %w", gpu, err)
	}
	defer func() {
		if err != nil {
			b.ctx.Destroy()
		}
	}()
	if b.builtins, err = cu.LoadData(builtinsPTX); err != nil {
		return nil, fmt.Errorf("cuda: load built-in kernels: %w", err)
	}
	for _, name := range []string{"gm_matmul_f32", "gm_matmul_f16", "gm_matmul_bf16", "gm_saxpy", "gm_reduce_sum", "gm_softmax", "gm_relu", "gm_transpose"} {
		if b.fns[name], err = b.builtins.Function(name); err != nil {
			return nil, fmt.Errorf("cuda: built-in %s: %w", name, err)
		}
	}
	if b.copy, err = cu.MakeStream(cu.NonBlocking); err != nil {
		return nil, fmt.Errorf("cuda: stream: %w", err)
	}

	maj, _ := b.dev.Attribute(cu.ComputeCapabilityMajor)
	min, _ := b.dev.Attribute(cu.ComputeCapabilityMinor)
	b.arch = fmt.Sprintf("compute_%d%d", maj, min)
	name, _ := b.dev.Name()
	uuid, _ := b.dev.UUID()
	total, _ := b.dev.TotalMem()
	v := cu.Version()
	b.static = gpusvc.Info{
		Backend: "cuda",
		Devices: []gpusvc.Device{{
			Index: gpu, UUID: "GPU-" + uuid.String(), Name: name, MemoryTotal: uint64(total),
			CUDAVersion: fmt.Sprintf("%d.%d", v/1000, v%1000/10),
		}},
	}
	names := nvrtc.Sonames
	if env := os.Getenv("NVRTC_LIBRARY"); env != "" {
		names = append([]string{env}, names...)
	}
	lib, nerr := nvrtc.Open(names...)
	if nerr != nil {
		b.static.NVRTC = "none: " + nerr.Error()
	} else {
		b.nvrtc = lib
		b.static.NVRTC = lib.Name()
	}
	b.static.Status = fmt.Sprintf("cuda %s on %s (sm %d.%d), %d GPU(s) on this host; built-ins: embedded PTX; custom kernels: PTX, CUDA C via %s",
		b.static.Devices[0].CUDAVersion, name, maj, min, n, b.static.NVRTC)
	return b, nil
}

// do runs fn on an OS thread with the context current, and maps its error.
func (b *Backend) do(fn func() error) error {
	b.mu.Lock()
	lost := b.lost
	b.mu.Unlock()
	if lost != nil {
		return lost
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cu.SetCurrentContext(b.ctx); err != nil {
		return b.mapErr(err)
	}
	return b.mapErr(fn())
}

// sticky are the errors after which a CUDA context is unusable.
var sticky = []error{
	cu.IllegalAddress, cu.LaunchFailed, cu.Assert, cu.HardwareStackError, cu.IllegalInstruction,
	cu.MisalignedAddress, cu.InvalidAddressSpace, cu.InvalidPc, cu.LaunchTimeout, cu.ContextIsDestroyed,
}

// mapErr maps CUDA errors to gpusvc's sentinels and records a fault.
func (b *Backend) mapErr(err error) error {
	if err == nil {
		return nil
	}
	for _, s := range sticky {
		if errors.Is(err, s) {
			lost := fmt.Errorf("cuda: gpu %d: %v: %w", b.gpu, err, worker.ErrFault)
			b.mu.Lock()
			if b.lost == nil {
				b.lost = lost
			}
			b.mu.Unlock()
			return lost
		}
	}
	switch {
	case errors.Is(err, cu.OutOfMemory):
		return fmt.Errorf("cuda: %v: %w", err, gpusvc.ErrOutOfMemory)
	case errors.Is(err, cu.InvalidPtx), errors.Is(err, cu.NotFound), errors.Is(err, cu.LaunchOutOfResources),
		errors.Is(err, cu.InvalidValue), errors.Is(err, cu.InvalidImage), errors.Is(err, cu.NoBinaryForGpu):
		return fmt.Errorf("cuda: %v: %w", err, kernel.ErrInvalid)
	}
	return err
}

// stream returns the session's stream, creating it. The context is current.
func (b *Backend) stream(session uint64) (cu.Stream, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s, ok := b.streams[session]; ok {
		return s, nil
	}
	if len(b.order) >= maxStreams {
		old := b.order[0]
		b.order = b.order[1:]
		s := b.streams[old]
		delete(b.streams, old)
		s.Destroy() // released once its work is done
	}
	s, err := cu.MakeStream(cu.NonBlocking)
	if err != nil {
		return cu.Stream{}, err
	}
	b.streams[session] = s
	b.order = append(b.order, session)
	return s, nil
}

func (b *Backend) checkGPU(gpu int) error {
	if gpu != b.gpu {
		return fmt.Errorf("cuda: gpu %d: %w (this worker serves gpu %d)", gpu, gpusvc.ErrNoDevice, b.gpu)
	}
	return nil
}

// Info reports the GPU with its memory in use.
func (b *Backend) Info(context.Context) gpusvc.Info {
	info := b.static
	info.Devices = append([]gpusvc.Device(nil), b.static.Devices...)
	b.do(func() error {
		free, total, err := cu.MemInfo()
		if err == nil {
			info.Devices[0].MemoryUsed = uint64(total - free)
		}
		return err
	})
	return info
}

// Close frees every buffer, module and stream and destroys the context.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cu.SetCurrentContext(b.ctx)
	for h, buf := range b.buffers {
		cu.MemFree(buf.ptr)
		delete(b.buffers, h)
	}
	for id, m := range b.modules {
		m.Unload()
		delete(b.modules, id)
	}
	for s, st := range b.streams {
		st.Destroy()
		delete(b.streams, s)
	}
	return b.ctx.Destroy()
}

// params holds kernel parameters as cu.Function.Launch takes them: each
// one 8 bytes, read little-endian, so 4-byte parameters use the low half.
type params []uint64

func (p *params) ptr(d cu.DevicePtr) { *p = append(*p, uint64(d)) }
func (p *params) i32(v int)          { *p = append(*p, uint64(uint32(int32(v)))) }
func (p *params) i64(v int64)        { *p = append(*p, uint64(v)) }
func (p *params) f32(v float32)      { *p = append(*p, uint64(math.Float32bits(v))) }

func (p params) pointers() []unsafe.Pointer {
	out := make([]unsafe.Pointer, len(p))
	for i := range p {
		out[i] = unsafe.Pointer(&p[i])
	}
	return out
}

func ceilDiv(a, b int64) int { return int((a + b - 1) / b) }

// gridFor is a grid-stride launch's block count for n elements.
func gridFor(n int64) int { return max(1, min(ceilDiv(n, 256), 8192)) }

// operands resolves arguments to device pointers: buffers by handle, inline
// tensors uploaded on st into temporaries that free releases.
func (b *Backend) operands(st cu.Stream, args []kernel.Arg) (ptrs []cu.DevicePtr, free func(), err error) {
	var temps []cu.DevicePtr
	free = func() {
		for _, t := range temps {
			cu.MemFree(t)
		}
	}
	ptrs = make([]cu.DevicePtr, len(args))
	for i, a := range args {
		switch a.Kind {
		case kernel.ArgBuffer:
			need := a.Tensor.Elems() * int64(a.Tensor.DType.Size())
			b.mu.Lock()
			buf, ok := b.buffers[a.Buffer]
			b.mu.Unlock()
			if !ok {
				free()
				return nil, nil, fmt.Errorf("cuda: buffer %d: %w", a.Buffer, gpusvc.ErrNoBuffer)
			}
			if need > buf.size {
				free()
				return nil, nil, fmt.Errorf("cuda: buffer %d holds %d bytes; shape %v of %s needs %d: %w",
					a.Buffer, buf.size, a.Tensor.Shape, a.Tensor.DType, need, kernel.ErrInvalid)
			}
			ptrs[i] = buf.ptr
		case kernel.ArgTensor:
			n := int64(len(a.Tensor.Data))
			if n == 0 {
				continue
			}
			d, err := cu.MemAlloc(n)
			if err != nil {
				free()
				return nil, nil, err
			}
			temps = append(temps, d)
			if err := cu.MemcpyHtoDAsync(d, unsafe.Pointer(&a.Tensor.Data[0]), n, st); err != nil {
				free()
				return nil, nil, err
			}
			ptrs[i] = d
		}
	}
	return ptrs, free, nil
}

// maxOutElems bounds an output the backend allocates (on the device, and
// in host memory to return it), whoever asks: the server bounds outputs
// by its own limits first.
const maxOutElems = 1 << 33

// Compute runs a built-in kernel on the session's stream.
func (b *Backend) Compute(ctx context.Context, c gpusvc.Call) (out kernel.Tensor, err error) {
	if err := b.checkGPU(c.GPU); err != nil {
		return kernel.Tensor{}, err
	}
	dt := kernel.Float32
	if c.Kernel == "matrix_mul" {
		dt = c.Args[0].Tensor.DType
	}
	for _, a := range c.Args {
		if (a.Kind == kernel.ArgTensor || a.Kind == kernel.ArgBuffer) && c.Kernel != "transpose" && a.Tensor.DType != dt {
			return kernel.Tensor{}, fmt.Errorf("cuda: %s: %s argument: %w", c.Kernel, a.Tensor.DType, kernel.ErrInvalid)
		}
	}
	if c.Kernel == "transpose" {
		dt = c.Args[0].Tensor.DType
	}
	outElems := int64(1)
	for _, d := range c.OutShape {
		if d <= 0 || outElems > maxOutElems/d {
			return kernel.Tensor{}, fmt.Errorf("cuda: %s: output %v is over %d elements: %w", c.Kernel, c.OutShape, int64(maxOutElems), kernel.ErrInvalid)
		}
		outElems *= d
	}
	outBytes := outElems * int64(dt.Size())
	err = b.do(func() error {
		st, err := b.stream(gpusvc.SessionID(ctx))
		if err != nil {
			return err
		}
		ptrs, free, err := b.operands(st, c.Args)
		if err != nil {
			return err
		}
		defer free()
		var dst cu.DevicePtr
		if c.Out != 0 {
			b.mu.Lock()
			buf, ok := b.buffers[c.Out]
			b.mu.Unlock()
			if !ok {
				return fmt.Errorf("cuda: buffer %d: %w", c.Out, gpusvc.ErrNoBuffer)
			}
			if buf.size < outBytes {
				return fmt.Errorf("cuda: output buffer %d holds %d bytes, the result is %d: %w", c.Out, buf.size, outBytes, kernel.ErrInvalid)
			}
			dst = buf.ptr
		} else {
			if dst, err = cu.MemAlloc(outBytes); err != nil {
				return err
			}
			defer cu.MemFree(dst)
		}
		if err := b.launchBuiltin(st, c, ptrs, dst); err != nil {
			return err
		}
		if c.Out != 0 {
			return st.Synchronize()
		}
		data := make([]byte, outBytes)
		if err := cu.MemcpyDtoHAsync(unsafe.Pointer(&data[0]), dst, outBytes, st); err != nil {
			return err
		}
		if err := st.Synchronize(); err != nil {
			return err
		}
		out.Data = data
		return nil
	})
	if err != nil {
		return kernel.Tensor{}, fmt.Errorf("cuda: %s: %w", c.Kernel, err)
	}
	out.DType, out.Shape = dt, c.OutShape
	return out, nil
}

func (b *Backend) launchBuiltin(st cu.Stream, c gpusvc.Call, in []cu.DevicePtr, dst cu.DevicePtr) error {
	var p params
	var fn string
	grid, block := [3]int{1, 1, 1}, [3]int{256, 1, 1}
	switch c.Kernel {
	case "matrix_mul":
		a, bb := c.Args[0].Tensor, c.Args[1].Tensor
		m, k, n := a.Shape[0], a.Shape[1], bb.Shape[1]
		fn = map[kernel.DType]string{kernel.Float32: "gm_matmul_f32", kernel.Float16: "gm_matmul_f16", kernel.BFloat16: "gm_matmul_bf16"}[a.DType]
		p.ptr(in[0])
		p.ptr(in[1])
		p.ptr(dst)
		p.i32(int(m))
		p.i32(int(n))
		p.i32(int(k))
		grid, block = [3]int{ceilDiv(n, 16), ceilDiv(m, 16), 1}, [3]int{16, 16, 1}
	case "saxpy":
		alpha := float32(c.Args[0].Scalar)
		if c.Args[0].Kind == kernel.ArgInt {
			alpha = float32(c.Args[0].Int)
		}
		n := c.Args[1].Tensor.Elems()
		fn = "gm_saxpy"
		p.ptr(dst)
		p.f32(alpha)
		p.ptr(in[1])
		p.ptr(in[2])
		p.i64(n)
		grid[0] = gridFor(n)
	case "reduce_sum":
		n := c.Args[0].Tensor.Elems()
		if err := cu.MemsetD32Async(dst, 0, 1, st); err != nil {
			return err
		}
		fn = "gm_reduce_sum"
		p.ptr(dst)
		p.ptr(in[0])
		p.i64(n)
		grid[0] = min(gridFor(n), 1024)
	case "softmax":
		x := c.Args[0].Tensor
		cols := x.Shape[len(x.Shape)-1]
		rows := x.Elems() / cols
		if rows > math.MaxInt32 {
			return fmt.Errorf("cuda: softmax over %d rows: %w", rows, kernel.ErrInvalid)
		}
		fn = "gm_softmax"
		p.ptr(dst)
		p.ptr(in[0])
		p.i64(rows)
		p.i32(int(cols))
		grid[0] = int(rows)
	case "relu":
		n := c.Args[0].Tensor.Elems()
		fn = "gm_relu"
		p.ptr(dst)
		p.ptr(in[0])
		p.i64(n)
		grid[0] = gridFor(n)
	case "transpose":
		a := c.Args[0].Tensor
		m, n := a.Shape[0], a.Shape[1]
		fn = "gm_transpose"
		p.ptr(dst)
		p.ptr(in[0])
		p.i32(int(m))
		p.i32(int(n))
		grid, block = [3]int{ceilDiv(n, 16), ceilDiv(m, 16), 1}, [3]int{16, 16, 1}
	default:
		return fmt.Errorf("cuda: %w %q", kernel.ErrUnknownKernel, c.Kernel)
	}
	if grid[1] > 65535 {
		return fmt.Errorf("cuda: %s: %d row tiles is over the grid limit: %w", c.Kernel, grid[1], kernel.ErrInvalid)
	}
	return b.fns[fn].Launch(grid[0], grid[1], grid[2], block[0], block[1], block[2], 0, st, p.pointers())
}

// Alloc allocates n bytes of device memory, zeroed.
func (b *Backend) Alloc(_ context.Context, gpu int, n int64) (uint64, error) {
	if err := b.checkGPU(gpu); err != nil {
		return 0, err
	}
	if n <= 0 {
		return 0, fmt.Errorf("cuda: alloc %d bytes: %w", n, kernel.ErrInvalid)
	}
	var d cu.DevicePtr
	err := b.do(func() (err error) {
		if d, err = cu.MemAlloc(n); err != nil {
			return err
		}
		if err := cu.MemsetD8Async(d, 0, n, b.copy); err != nil {
			cu.MemFree(d)
			return err
		}
		return b.copy.Synchronize()
	})
	if err != nil {
		return 0, fmt.Errorf("cuda: alloc %d bytes: %w", n, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.next++
	b.buffers[b.next] = devBuf{ptr: d, size: n}
	return b.next, nil
}

// Free zeroes and releases a buffer.
func (b *Backend) Free(_ context.Context, h uint64) error {
	b.mu.Lock()
	buf, ok := b.buffers[h]
	delete(b.buffers, h)
	b.mu.Unlock()
	if !ok {
		return fmt.Errorf("cuda: buffer %d: %w", h, gpusvc.ErrNoBuffer)
	}
	return b.do(func() error {
		if err := cu.MemsetD8Async(buf.ptr, 0, buf.size, b.copy); err != nil {
			return err
		}
		if err := b.copy.Synchronize(); err != nil {
			return err
		}
		return cu.MemFree(buf.ptr)
	})
}

func (b *Backend) span(h uint64, off int64, n int, what string) (cu.DevicePtr, error) {
	b.mu.Lock()
	buf, ok := b.buffers[h]
	b.mu.Unlock()
	if !ok {
		return 0, fmt.Errorf("cuda: buffer %d: %w", h, gpusvc.ErrNoBuffer)
	}
	if off < 0 || off+int64(n) > buf.size {
		return 0, fmt.Errorf("cuda: %s %d bytes at %d of a %d-byte buffer: %w", what, n, off, buf.size, kernel.ErrInvalid)
	}
	return buf.ptr + cu.DevicePtr(off), nil
}

// WriteAt copies p into buffer h at off; the copy is complete on return.
func (b *Backend) WriteAt(_ context.Context, h uint64, off int64, p []byte) error {
	d, err := b.span(h, off, len(p), "write")
	if err != nil || len(p) == 0 {
		return err
	}
	return b.do(func() error {
		if err := cu.MemcpyHtoDAsync(d, unsafe.Pointer(&p[0]), int64(len(p)), b.copy); err != nil {
			return err
		}
		return b.copy.Synchronize()
	})
}

// ReadAt copies from buffer h at off into p.
func (b *Backend) ReadAt(_ context.Context, h uint64, off int64, p []byte) error {
	d, err := b.span(h, off, len(p), "read")
	if err != nil || len(p) == 0 {
		return err
	}
	return b.do(func() error {
		if err := cu.MemcpyDtoHAsync(unsafe.Pointer(&p[0]), d, int64(len(p)), b.copy); err != nil {
			return err
		}
		return b.copy.Synchronize()
	})
}
