package worker

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	pb "github.com/gpumesh/gpumesh/gpusvc/worker/workerpb"
)

// ErrFault marks a kernel fault that lost the worker's device context (an
// illegal address, a trap, ...): a CUDA context is unusable after one, so a
// worker answers the faulting call with it and then exits, and its
// supervisor starts a fresh one for the next call. The server answers the
// call with Aborted.
var ErrFault = errors.New("kernel fault, device context lost")

// ErrCrashed marks a call that failed because its worker process died
// while the call was in flight, or is restarting after repeated crashes.
// The server answers it with Unavailable; other callers' workers are not
// affected.
var ErrCrashed = errors.New("gpu worker crashed")

// ErrLost marks a buffer whose worker crashed: its data is gone. The
// server answers it with DataLoss.
var ErrLost = errors.New("buffer lost with its gpu worker")

// wireCodes gives each sentinel a distinct code on the node↔worker wire,
// so that the node gets the very sentinel back. The codes here are the
// wire's only; what callers see is the server's mapping of the sentinel.
var wireCodes = []struct {
	err  error
	code codes.Code
}{
	{gpusvc.ErrNoDevice, codes.OutOfRange},
	{gpusvc.ErrUnsupported, codes.Unimplemented},
	{gpusvc.ErrNoBuffer, codes.NotFound},
	{gpusvc.ErrOutOfMemory, codes.ResourceExhausted},
	{kernel.ErrUnknownKernel, codes.FailedPrecondition},
	{kernel.ErrInvalid, codes.InvalidArgument},
	{ErrFault, codes.Aborted},
}

// toStatus is the worker side: a backend error as a wire status.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	for _, w := range wireCodes {
		if errors.Is(err, w.err) {
			return status.Error(w.code, err.Error())
		}
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codes.Internal, err.Error())
}

// remoteError is the node side of a worker's error: the worker's message
// and the sentinel its wire code stands for.
type remoteError struct {
	msg      string
	sentinel error      // nil for errors without one
	code     codes.Code // what the server answers, when sentinel has no mapping there
}

func (e *remoteError) Error() string { return "gpu worker: " + e.msg }
func (e *remoteError) Unwrap() error { return e.sentinel }

// GRPCStatus gives the code for the errors gpusvc's own mapping does not
// know (faults, crashes, lost buffers); others are left to it.
func (e *remoteError) GRPCStatus() *status.Status {
	if e.code == codes.OK {
		return nil
	}
	return status.New(e.code, "gpumesh: "+e.Error())
}

// fromStatus is the node side: a wire error as a backend error.
func fromStatus(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	for _, w := range wireCodes {
		if st.Code() == w.code {
			e := &remoteError{msg: st.Message(), sentinel: w.err}
			if w.err == ErrFault {
				e.code = codes.Aborted
			}
			return e
		}
	}
	return &remoteError{msg: st.Message(), code: st.Code()}
}

// crashError is a call's failure because its worker died.
func crashError(what string, reason string) error {
	return &remoteError{msg: fmt.Sprintf("%s: %s", what, reason), sentinel: ErrCrashed, code: codes.Unavailable}
}

func lostError(handle uint64, reason string) error {
	return &remoteError{
		msg:      fmt.Sprintf("buffer %d: %v (%s)", handle, ErrLost, reason),
		sentinel: errors.Join(ErrLost, gpusvc.ErrNoBuffer),
		code:     codes.DataLoss,
	}
}

func tensorToPB(t kernel.Tensor) *pb.Tensor {
	return &pb.Tensor{Dtype: int32(t.DType), Shape: t.Shape, Data: t.Data}
}

func tensorFromPB(t *pb.Tensor) kernel.Tensor {
	return kernel.Tensor{DType: kernel.DType(t.GetDtype()), Shape: t.GetShape(), Data: t.GetData()}
}

// argsToPB converts arguments, replacing buffer handles with the worker's
// through handle.
func argsToPB(args []kernel.Arg, handle func(uint64) (uint64, error)) ([]*pb.Arg, error) {
	out := make([]*pb.Arg, len(args))
	for i, a := range args {
		w := &pb.Arg{Kind: int32(a.Kind), Scalar: a.Scalar, Int: a.Int}
		switch a.Kind {
		case kernel.ArgTensor:
			w.Tensor = tensorToPB(a.Tensor)
		case kernel.ArgBuffer:
			h, err := handle(a.Buffer)
			if err != nil {
				return nil, err
			}
			w.Buffer = h
			w.Tensor = &pb.Tensor{Dtype: int32(a.Tensor.DType), Shape: a.Tensor.Shape}
		}
		out[i] = w
	}
	return out, nil
}

func argsFromPB(in []*pb.Arg) []kernel.Arg {
	out := make([]kernel.Arg, len(in))
	for i, a := range in {
		out[i] = kernel.Arg{
			Kind: kernel.ArgKind(a.GetKind()), Buffer: a.GetBuffer(), Scalar: a.GetScalar(), Int: a.GetInt(),
		}
		if a.GetTensor() != nil {
			out[i].Tensor = tensorFromPB(a.GetTensor())
		}
	}
	return out
}

func infoToPB(in gpusvc.Info) *pb.Info {
	out := &pb.Info{Backend: in.Backend, Status: in.Status, Nvrtc: in.NVRTC}
	for _, d := range in.Devices {
		out.Devices = append(out.Devices, &pb.Device{
			Index: int32(d.Index), Uuid: d.UUID, Name: d.Name, MemoryTotal: d.MemoryTotal, MemoryUsed: d.MemoryUsed,
			UtilizationPercent: d.UtilizationPercent, TemperatureC: d.TemperatureC, PowerMw: d.PowerMW,
			DriverVersion: d.DriverVersion, CudaVersion: d.CUDAVersion,
		})
	}
	return out
}

func infoFromPB(in *pb.Info) gpusvc.Info {
	out := gpusvc.Info{Backend: in.GetBackend(), Status: in.GetStatus(), NVRTC: in.GetNvrtc()}
	for _, d := range in.GetDevices() {
		out.Devices = append(out.Devices, gpusvc.Device{
			Index: int(d.GetIndex()), UUID: d.GetUuid(), Name: d.GetName(), MemoryTotal: d.GetMemoryTotal(),
			MemoryUsed: d.GetMemoryUsed(), UtilizationPercent: d.GetUtilizationPercent(), TemperatureC: d.GetTemperatureC(),
			PowerMW: d.GetPowerMw(), DriverVersion: d.GetDriverVersion(), CUDAVersion: d.GetCudaVersion(),
		})
	}
	return out
}

func dim(v []uint32) [3]uint32 {
	var d [3]uint32
	for i := range d {
		d[i] = 1
		if i < len(v) && v[i] > 0 {
			d[i] = v[i]
		}
	}
	return d
}
