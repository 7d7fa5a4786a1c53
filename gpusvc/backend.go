package gpusvc

import (
	"context"
	"errors"

	"github.com/gpumesh/gpumesh/gpusvc/kernel"
)

// Backend runs kernels. The CPU backend (gpusvc/cpu) is the default
// everywhere; a CUDA host runs its GPUs through supervised worker processes.
type Backend interface {
	// Info describes the backend and its devices, with live telemetry.
	Info(ctx context.Context) Info
	// Compute runs a built-in kernel. The call has been validated with
	// kernel.Check; buffer arguments carry handles this backend issued.
	Compute(ctx context.Context, c Call) (kernel.Tensor, error)
	// Close releases the backend's resources.
	Close() error
}

// Memory is implemented by backends that keep buffers resident between
// calls. Handles are the backend's own and never 0. Every method may block
// (a worker process, a device copy) and gives up when ctx is done; Free
// zeroes the buffer before it forgets it, and the server calls it with a
// context of its own, so that a buffer is freed even when its caller has
// gone.
type Memory interface {
	Alloc(ctx context.Context, gpu int, n int64) (handle uint64, err error)
	Free(ctx context.Context, handle uint64) error
	// WriteAt and ReadAt copy bytes into and out of a buffer.
	WriteAt(ctx context.Context, handle uint64, off int64, p []byte) error
	ReadAt(ctx context.Context, handle uint64, off int64, p []byte) error
}

// Modules is implemented by backends that run callers' own kernels (CUDA).
// The CPU backend does not implement it; the server then answers
// LoadModule and Launch with Unimplemented.
type Modules interface {
	// LoadModule loads PTX, or CUDA C source compiled with NVRTC, and
	// returns the module's ID (a content hash) and the compiler's log.
	LoadModule(ctx context.Context, gpu int, src ModuleSource) (id string, log string, cached bool, err error)
	// Launch runs a function of a loaded module.
	Launch(ctx context.Context, l Launch) error
}

// ModuleSource is a module's code: exactly one of PTX and CUDA is set.
type ModuleSource struct {
	PTX  []byte
	CUDA string
}

// Launch is one kernel launch on a loaded module.
type Launch struct {
	GPU            int
	Module         string
	Function       string
	Grid, Block    [3]uint32
	SharedMemBytes uint32
	// Args are buffers (by backend handle) and scalars.
	Args []kernel.Arg
}

// Call is one validated kernel call.
type Call struct {
	Kernel string
	GPU    int
	Args   []kernel.Arg
	// Out, when not 0, is a buffer handle the result is written into
	// instead of being returned.
	Out uint64
	// OutShape is the result's shape, from kernel.Check.
	OutShape []int64
}

// Info describes a backend.
type Info struct {
	Backend string // "cpu" or "cuda"
	Devices []Device
	Status  string // one line: why this backend, what is missing
	NVRTC   string // the NVRTC library found, if any
}

// Device is one compute device and its telemetry.
type Device struct {
	Index              int
	UUID               string
	Name               string
	MemoryTotal        uint64
	MemoryUsed         uint64
	UtilizationPercent uint32
	TemperatureC       int32
	PowerMW            uint32
	DriverVersion      string
	CUDAVersion        string
}

// Sentinel errors backends return; the server maps them to gRPC codes.
var (
	// ErrNoDevice: the GPU asked for does not exist on this host.
	ErrNoDevice = errors.New("no such device")
	// ErrUnsupported: the backend cannot do this (custom kernels on CPU).
	ErrUnsupported = errors.New("not supported by this backend")
	// ErrNoBuffer: the buffer handle is unknown or not the caller's.
	ErrNoBuffer = errors.New("no such buffer")
	// ErrOutOfMemory: the device cannot hold the allocation.
	ErrOutOfMemory = errors.New("out of device memory")
	// ErrBusy: the backend runs as much as it may (e.g. every GPU worker
	// it may start is busy); a later call may succeed.
	ErrBusy = errors.New("backend busy")
)
