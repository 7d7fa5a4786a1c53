package gpusvc

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/gpumesh/gpumesh/gpusvc/compat"
	"github.com/gpumesh/gpumesh/gpusvc/cudapb"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
)

// cuda.CUDAService, the door for clients written the way remote-GPU posts
// show them (examples/cuda), is another door into the same room: its
// Compute goes through the interceptors as any call does (identified,
// recorded once as "cuda.Compute" with its caller) and then through
// computeFrom, the entry of gpumesh.v1's Compute: the same bounds, GPU
// resolution, policy decision, QoS class, quotas and memory budget.
// gpusvc/compat converts its request (compat.Target before the call is
// authorized, compat.ToCall after) and the kernel's output.
//
// Its params are a google.protobuf.Struct, which takes about 9.4 times its
// wire size in heap once decoded (104 bytes per number for 11 on the
// wire), and gRPC decodes a request before any handler runs. So the door
// has its own, smaller cap on a request's size (Config.MaxCUDARequestBytes),
// checked by the server's codec on the wire bytes before they are decoded:
// a caller's 64 MiB Struct is refused for its size, never turned into
// 600 MB of heap.

// DefaultMaxCUDARequestBytes caps one cuda.CUDAService request: decoded,
// it takes about 80 MB of heap, what a gpumesh.v1 request of the default
// 64 MiB holds with its wire bytes. It carries about 760,000 numbers in
// all (two 600×600 matrices).
const DefaultMaxCUDARequestBytes = 8 << 20

// Memory the door's messages take, counted against the host's budget
// (Config.MaxMemory) while a call holds them: a decoded request per wire
// byte, and a reply (nested and flat values, and its encoding) per number
// of the output.
const (
	cudaDecodedPerWireByte = 10
	cudaReplyPerNumber     = 112
)

// cudaService is cuda.CUDAService as the host registers it: the generated
// service, with a Compute handler that hands the server's codec a
// sizedRequest, so that the request's size is checked before it is decoded.
var cudaService = grpc.ServiceDesc{
	ServiceName: cudapb.CUDAService_ServiceDesc.ServiceName,
	HandlerType: (*cudaDoor)(nil),
	Methods:     []grpc.MethodDesc{{MethodName: "Compute", Handler: cudaComputeHandler}},
	Metadata:    cudapb.CUDAService_ServiceDesc.Metadata,
}

// cudaDoor is what serves cudaService: the Server.
type cudaDoor interface {
	maxCUDARequest() int
	computeCUDA(ctx context.Context, in *sizedRequest) (*cudapb.ComputeResponse, error)
}

func (s *Server) maxCUDARequest() int { return int(s.cfg.MaxCUDARequestBytes) }

var _ cudaDoor = (*Server)(nil)

func cudaComputeHandler(srv any, ctx context.Context, dec func(any) error, entry grpc.UnaryServerInterceptor) (any, error) {
	door := srv.(cudaDoor)
	in := &sizedRequest{msg: new(cudapb.ComputeRequest), max: door.maxCUDARequest()}
	if err := dec(in); err != nil {
		return nil, err
	}
	if entry == nil { // NewServer always installs unaryEntry
		return nil, status.Error(codes.Internal, "gpumesh: cuda.CUDAService served without the call pipeline")
	}
	info := &grpc.UnaryServerInfo{Server: srv, FullMethod: cudapb.CUDAService_Compute_FullMethodName}
	return entry(ctx, in, info, func(ctx context.Context, req any) (any, error) {
		return door.computeCUDA(ctx, req.(*sizedRequest))
	})
}

// computeCUDA is a cuda.CUDAService Compute call, after identification.
func (s *Server) computeCUDA(ctx context.Context, in *sizedRequest) (*cudapb.ComputeResponse, error) {
	c := callOf(ctx)
	size := int64(in.size)
	if in.size > in.max {
		c.in = size
		return nil, status.Errorf(codes.ResourceExhausted,
			"gpumesh: a cuda.CUDAService request of %d bytes is over this host's %d-byte limit for that service (its params take about 10 times their size in memory); gpumesh.v1.GPU takes tensors of up to %d bytes as raw bytes",
			in.size, in.max, s.cfg.MaxRequestBytes)
	}
	// The decoded request is held until the call ends.
	held := size * cudaDecodedPerWireByte
	if err := s.quotas.take(held); err != nil {
		c.in = size
		return nil, err
	}
	c.onEnd(func() { s.quotas.give(held) })
	res, err := s.computeFrom(ctx, c, cudaRequest{req: in.msg.(*cudapb.ComputeRequest), wire: in.wire, plain: in.plain}, size)
	if err != nil {
		return nil, err
	}
	return compat.ResponseFromPB(res, compat.Limits{})
}

// cudaRequest is cuda.CUDAService's ComputeRequest: in its wire form where
// the codec found it plain, else decoded.
type cudaRequest struct {
	req   *cudapb.ComputeRequest
	wire  compat.Wire
	plain bool
}

func (r cudaRequest) target() (string, string, error) {
	kernelName := r.req.GetKernel()
	if r.plain {
		kernelName = r.wire.Kernel()
	}
	name, err := checkName("kernel", kernelName)
	if err != nil {
		return name, "", err
	}
	if r.plain {
		_, gpu, err := r.wire.Target()
		return name, gpu, err
	}
	_, gpu, err := compat.Target(r.req)
	return name, gpu, err
}

func (r cudaRequest) decode() (*pb.ComputeRequest, error) {
	toCall := func() (compat.Call, error) { return compat.ToCall(r.req, compat.Limits{}) }
	if r.plain {
		toCall = func() (compat.Call, error) { return r.wire.ToCall(compat.Limits{}) }
	}
	call, err := toCall()
	if err != nil {
		return nil, err
	}
	return call.Request(), nil
}

func (cudaRequest) replyBytes(n int64) int64 { return n * cudaReplyPerNumber }

// sizedRequest is a request message whose size the server's codec checks
// before decoding it: one over max is left empty, its size noted, for the
// handler to refuse inside the pipeline (identified and recorded). A
// cuda.ComputeRequest in the plain form is kept as its wire bytes
// (compat.ParseWire): its params are read into tensors once the call is
// authorized, never built as a Struct.
type sizedRequest struct {
	msg   proto.Message
	max   int
	size  int         // the encoded message's size, set by the codec
	wire  compat.Wire // set by the codec where plain
	plain bool
}

// serverCodec is gRPC's proto codec, which also takes a sizedRequest.
type serverCodec struct{ encoding.CodecV2 }

func newServerCodec() serverCodec {
	return serverCodec{encoding.GetCodecV2(protocodec.Name)}
}

func (c serverCodec) Unmarshal(data mem.BufferSlice, v any) error {
	in, ok := v.(*sizedRequest)
	if !ok {
		return c.CodecV2.Unmarshal(data, v)
	}
	if in.size = data.Len(); in.size > in.max {
		return nil
	}
	if _, isCUDA := in.msg.(*cudapb.ComputeRequest); isCUDA {
		// data's buffers go back to gRPC's pool on return: keep a copy.
		if in.wire, in.plain = compat.ParseWire(data.Materialize()); in.plain {
			return nil
		}
	}
	return c.CodecV2.Unmarshal(data, in.msg)
}
