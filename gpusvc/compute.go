package gpusvc

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/policy"
)

// Compute runs one kernel call.
func (s *Server) Compute(ctx context.Context, req *pb.ComputeRequest) (*pb.ComputeResponse, error) {
	return s.compute(ctx, callOf(ctx), req)
}

// compute is a unary gpumesh.v1 Compute call, after identification (a
// Stream's calls go to computeFrom with the size their start measured).
func (s *Server) compute(ctx context.Context, c *call, req *pb.ComputeRequest) (*pb.ComputeResponse, error) {
	return s.computeFrom(ctx, c, gpuRequest{req}, int64(proto.Size(req)))
}

// computeRequest is a Compute request as one of the host's doors took it:
// gpumesh.v1.GPU's (gpuRequest) or cuda.CUDAService's (cudaRequest, in
// door.go). computeFrom asks it for what it names before the call is
// authorized and for its arguments only after.
type computeRequest interface {
	// target returns the kernel and the GPU the request names, bounded,
	// without allocating anything for its arguments. The kernel name is
	// safe to record even with an error.
	target() (kernelName, gpu string, err error)
	// decode returns the call's arguments as a gpumesh.v1 request,
	// bounding whatever it allocates for them; it runs once the call is
	// authorized.
	decode() (*pb.ComputeRequest, error)
	// replyBytes is what the door's reply holds beyond an output of n
	// elements in its raw bytes: counted against the host's budget with
	// the output, until the reply is sent.
	replyBytes(n int64) int64
}

// gpuRequest is gpumesh.v1.GPU's ComputeRequest.
type gpuRequest struct{ req *pb.ComputeRequest }

func (r gpuRequest) target() (string, string, error) {
	name, err := checkName("kernel", r.req.GetKernel())
	if err != nil {
		return name, "", err
	}
	if _, ok := kernel.Lookup(name); !ok {
		return name, "", status.Errorf(codes.InvalidArgument, "gpumesh: unknown kernel %q (built-ins: %v)", name, kernel.Names())
	}
	if n := len(r.req.GetArgs()); n > maxArgs {
		return name, "", status.Errorf(codes.InvalidArgument, "gpumesh: %d arguments; at most %d", n, maxArgs)
	}
	return name, r.req.GetGpu(), nil
}

func (r gpuRequest) decode() (*pb.ComputeRequest, error) { return r.req, nil }
func (gpuRequest) replyBytes(int64) int64                { return 0 }

// computeFrom runs a Compute call of size bytes, whichever door it came
// through, in the order of every call: bound what the request names,
// resolve its GPU, authorize, decode and bound its arguments, allocate,
// run.
func (s *Server) computeFrom(ctx context.Context, c *call, r computeRequest, size int64) (*pb.ComputeResponse, error) {
	c.in = size
	// Bound what the request says on its own.
	name, gpu, err := r.target()
	c.kernel = name
	if err != nil {
		return nil, err
	}
	// Resolve the GPU, then decide.
	dev, err := c.resolveGPU(s, gpu)
	if err != nil {
		return nil, err
	}
	if err := s.authorize(c, policy.Request{Kernel: name, GPU: dev.name, GPUUUID: dev.uuid, Bytes: c.in}); err != nil {
		return nil, err
	}
	req, err := r.decode()
	if err != nil {
		return nil, err
	}
	// Resolve (and pin) the buffers it names, and bound the output.
	args, out, err := s.kernelArgs(c, dev, req.GetSession(), req.GetArgs(), req.GetOutBuffer())
	if err != nil {
		return nil, err
	}
	shape, err := kernel.Check(name, args)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "gpumesh: %v", err)
	}
	outBytes, err := shapeBytes(shape, outputDType(name, args))
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "gpumesh: %s: output %v", name, err)
	}
	call := Call{Kernel: name, GPU: dev.index, Args: args, OutShape: shape}
	if out != nil {
		if outBytes > out.size {
			return nil, status.Errorf(codes.InvalidArgument, "gpumesh: %s: the output is %d bytes; buffer %d holds %d", name, outBytes, req.GetOutBuffer(), out.size)
		}
		call.Out = out.handle
	} else if outBytes > s.cfg.MaxResponseBytes {
		return nil, status.Errorf(codes.ResourceExhausted, "gpumesh: %s: an output of %v is %d bytes, over the host's %d-byte limit on a result; write it into a buffer (out_buffer) instead",
			name, clipShape(shape), outBytes, s.cfg.MaxResponseBytes)
	}
	// Allocate: the output (and what the door's reply makes of it) counts
	// against the host's budget until the reply carrying it has been
	// handed to the transport.
	held := outBytes + r.replyBytes(outBytes/int64(outputDType(name, args).Size()))
	if err := s.quotas.take(held); err != nil {
		return nil, err
	}
	c.onReply(func() { s.quotas.give(held) })
	t0 := time.Now()
	t, err := s.cfg.Backend.Compute(backendCtx(ctx, c, req.GetSession()), call)
	if err != nil {
		return nil, statusOf(err)
	}
	c.out = int64(len(t.Data))
	return &pb.ComputeResponse{
		Outputs:      []*pb.Tensor{{Dtype: pb.DType(t.DType), Shape: t.Shape, Data: t.Data}},
		ComputeNanos: time.Since(t0).Nanoseconds(),
	}, nil
}

// backendCtx tells the backend whose call this is and in which session
// (the CUDA worker supervisor routes by caller and streams by session).
func backendCtx(ctx context.Context, c *call, session uint64) context.Context {
	return WithSession(WithCaller(ctx, c.who.key), session)
}

// kernelArgs converts wire arguments, resolving the buffers they name (and
// out, when not 0) in the caller's session and pinning them until the call
// ends: a Free meanwhile takes effect when the kernel is done. Each buffer
// must be on dev, and each buffer argument's shape must fit its buffer.
func (s *Server) kernelArgs(c *call, dev device, session uint64, in []*pb.Arg, out uint64) ([]kernel.Arg, *buffer, error) {
	args := make([]kernel.Arg, len(in))
	var ids []uint64
	for i, a := range in {
		switch v := a.GetValue().(type) {
		case *pb.Arg_Tensor:
			args[i] = kernel.Arg{Kind: kernel.ArgTensor, Tensor: tensorFromPB(v.Tensor)}
		case *pb.Arg_Scalar:
			args[i] = kernel.Arg{Kind: kernel.ArgScalar, Scalar: v.Scalar}
		case *pb.Arg_Int:
			args[i] = kernel.Arg{Kind: kernel.ArgInt, Int: v.Int}
		case *pb.Arg_Buffer:
			dt := kernel.DType(v.Buffer.GetDtype())
			if dt == 0 {
				dt = kernel.Float32
			}
			args[i] = kernel.Arg{Kind: kernel.ArgBuffer, Tensor: kernel.Tensor{DType: dt, Shape: v.Buffer.GetShape()}}
			ids = append(ids, v.Buffer.GetId())
		default:
			return nil, nil, status.Errorf(codes.InvalidArgument, "gpumesh: argument %d is empty", i)
		}
	}
	if out != 0 {
		ids = append(ids, out)
	}
	if len(ids) == 0 {
		return args, nil, nil
	}
	if session == 0 {
		return nil, nil, status.Errorf(codes.InvalidArgument, "gpumesh: buffer %d named without the call's session", ids[0])
	}
	if s.sessions.mem == nil {
		return nil, nil, errNoMemory
	}
	sess, err := s.sessions.use(c, session)
	if err != nil {
		return nil, nil, err
	}
	bs, err := s.sessions.pin(c, sess, ids...)
	if err != nil {
		return nil, nil, err
	}
	for i, b := range bs {
		if b.gpu.index != dev.index {
			return nil, nil, status.Errorf(codes.InvalidArgument, "gpumesh: buffer %d is on gpu %s; the call runs on gpu %s", ids[i], b.gpu.name, dev.name)
		}
	}
	sizes := make([]int64, len(bs))
	j := 0
	for i := range args {
		if args[i].Kind == kernel.ArgBuffer {
			args[i].Buffer = bs[j].handle
			sizes[j] = bs[j].size
			j++
		}
	}
	if err := checkBufferArgs(args, sizes); err != nil {
		return nil, nil, err
	}
	var outBuf *buffer
	if out != 0 {
		outBuf = bs[len(bs)-1]
	}
	return args, outBuf, nil
}

func tensorFromPB(t *pb.Tensor) kernel.Tensor {
	dt := kernel.DType(t.GetDtype())
	if t.GetDtype() == pb.DType_DTYPE_UNSPECIFIED {
		dt = kernel.Float32
	}
	return kernel.Tensor{DType: dt, Shape: t.GetShape(), Data: t.GetData()}
}

var errNoMemory = status.Error(codes.Unimplemented, "gpumesh: this host's backend keeps no resident buffers")
