package gpusvc

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
)

// DialFunc opens a connection inside the overlay.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Client calls a gpumesh compute endpoint. Compute calls share one
// long-lived stream: a message on an open stream costs much less than a
// unary call.
type Client struct {
	cc  *grpc.ClientConn
	api pb.GPUClient

	mu      sync.Mutex
	stream  *clientStream // the open stream, or nil; guarded by mu
	nextID  uint64        // guarded by mu
	closed  bool          // guarded by mu
	wg      sync.WaitGroup
	baseCtx context.Context
	cancel  context.CancelFunc
}

// NewClient returns a client for the endpoint at target ("gpu-host:50051"),
// reached through dial. It connects lazily, on the first call.
func NewClient(target string, dial DialFunc, opts ...grpc.DialOption) (*Client, error) {
	all := append([]grpc.DialOption{
		grpc.WithTransportCredentials(overlayCreds{}),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return dial(ctx, "tcp", addr)
		}),
		grpc.WithInitialWindowSize(windowSize),
		grpc.WithInitialConnWindowSize(windowSize),
		grpc.WithReadBufferSize(bufferSize),
		grpc.WithWriteBufferSize(bufferSize),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(math.MaxInt32), grpc.MaxCallSendMsgSize(math.MaxInt32)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	}, opts...)
	cc, err := grpc.NewClient("passthrough:///"+target, all...)
	if err != nil {
		return nil, fmt.Errorf("gpusvc: client for %s: %w", target, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Client{cc: cc, api: pb.NewGPUClient(cc), baseCtx: ctx, cancel: cancel}, nil
}

// API returns the raw generated client, for calls this type does not wrap.
func (c *Client) API() pb.GPUClient { return c.api }

// Devices describes the host's backend and GPUs.
func (c *Client) Devices(ctx context.Context) (*pb.DevicesResponse, error) {
	return c.api.Devices(ctx, &pb.DevicesRequest{})
}

// Explain asks the host how its policy decides for this node.
func (c *Client) Explain(ctx context.Context, kernelName, gpu string) (*pb.ExplainResponse, error) {
	return c.api.Explain(ctx, &pb.ExplainRequest{Kernel: kernelName, Gpu: gpu})
}

// Compute runs a built-in kernel on the default GPU and returns its output.
func (c *Client) Compute(ctx context.Context, kernelName string, args ...kernel.Arg) (kernel.Tensor, error) {
	res, err := c.ComputeRequest(ctx, &pb.ComputeRequest{Kernel: kernelName, Args: ArgsToPB(args)})
	if err != nil {
		return kernel.Tensor{}, err
	}
	if len(res.GetOutputs()) == 0 {
		return kernel.Tensor{}, nil
	}
	return tensorFromPB(res.GetOutputs()[0]), nil
}

// ComputeUnary runs one call as a unary RPC, without the shared stream.
func (c *Client) ComputeUnary(ctx context.Context, req *pb.ComputeRequest) (*pb.ComputeResponse, error) {
	return c.api.Compute(ctx, req)
}

// ComputeRequest runs one call on the client's shared stream. Errors are
// gRPC status errors, as a unary call would return.
func (c *Client) ComputeRequest(ctx context.Context, req *pb.ComputeRequest) (*pb.ComputeResponse, error) {
	s, id, ch, err := c.send(ctx, req)
	if err != nil {
		return nil, err
	}
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, r.err
		}
		if e := r.res.GetError(); e != nil {
			return nil, status.Error(codes.Code(e.GetCode()), e.GetMessage())
		}
		return r.res.GetCompute(), nil
	case <-ctx.Done():
		s.forget(id)
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// send queues req on the open stream, opening one if needed.
func (c *Client) send(ctx context.Context, req *pb.ComputeRequest) (*clientStream, uint64, chan streamResult, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, 0, nil, status.Error(codes.Canceled, "gpusvc: client closed")
	}
	if c.stream == nil || c.stream.broken() {
		st, err := c.api.Stream(c.baseCtx)
		if err != nil {
			return nil, 0, nil, err
		}
		c.stream = &clientStream{st: st, pending: make(map[uint64]chan streamResult)}
		c.wg.Add(1)
		go func(s *clientStream) {
			defer c.wg.Done()
			s.run()
		}(c.stream)
	}
	s := c.stream
	c.nextID++
	id := c.nextID
	ch := make(chan streamResult, 1)
	if err := s.add(id, ch); err != nil {
		return nil, 0, nil, err
	}
	// Sends are serialised by c.mu: a gRPC stream allows one sender.
	if err := s.st.Send(&pb.StreamRequest{Id: id, Compute: req}); err != nil {
		s.forget(id)
		s.fail(err)
		return nil, 0, nil, status.Convert(err).Err()
	}
	return s, id, ch, nil
}

// Close ends the stream and the connection. A second Close returns net.ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return net.ErrClosed
	}
	c.closed = true
	s := c.stream
	c.mu.Unlock()
	if s != nil {
		s.st.CloseSend()
	}
	c.cancel()
	err := c.cc.Close()
	c.wg.Wait()
	return err
}

type streamResult struct {
	res *pb.StreamResponse
	err error
}

// clientStream demultiplexes one Stream's responses to waiting calls. Its
// run goroutine, owned by the Client, is the only receiver.
type clientStream struct {
	st pb.GPU_StreamClient

	mu      sync.Mutex
	pending map[uint64]chan streamResult // guarded by mu
	err     error                        // set once the stream broke; guarded by mu
}

func (s *clientStream) add(id uint64, ch chan streamResult) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	s.pending[id] = ch
	return nil
}

func (s *clientStream) forget(id uint64) {
	s.mu.Lock()
	delete(s.pending, id)
	s.mu.Unlock()
}

func (s *clientStream) broken() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err != nil
}

// fail marks the stream broken and fails every waiting call.
func (s *clientStream) fail(err error) {
	st := status.Convert(err)
	if st.Code() == codes.Unknown || errors.Is(err, context.Canceled) {
		st = status.New(codes.Unavailable, "gpusvc: stream to host ended: "+st.Message())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = st.Err()
	}
	for id, ch := range s.pending {
		ch <- streamResult{err: s.err}
		delete(s.pending, id)
	}
}

func (s *clientStream) run() {
	for {
		res, err := s.st.Recv()
		if err != nil {
			s.fail(err)
			return
		}
		s.mu.Lock()
		ch := s.pending[res.GetId()]
		delete(s.pending, res.GetId())
		s.mu.Unlock()
		if ch != nil {
			ch <- streamResult{res: res}
		}
	}
}

// ArgsToPB converts kernel arguments to their wire form.
func ArgsToPB(args []kernel.Arg) []*pb.Arg {
	out := make([]*pb.Arg, len(args))
	for i, a := range args {
		switch a.Kind {
		case kernel.ArgTensor:
			out[i] = &pb.Arg{Value: &pb.Arg_Tensor{Tensor: TensorToPB(a.Tensor)}}
		case kernel.ArgBuffer:
			out[i] = &pb.Arg{Value: &pb.Arg_Buffer{Buffer: &pb.BufferRef{Id: a.Buffer, Dtype: pb.DType(a.Tensor.DType), Shape: a.Tensor.Shape}}}
		case kernel.ArgScalar:
			out[i] = &pb.Arg{Value: &pb.Arg_Scalar{Scalar: a.Scalar}}
		case kernel.ArgInt:
			out[i] = &pb.Arg{Value: &pb.Arg_Int{Int: a.Int}}
		default:
			out[i] = &pb.Arg{}
		}
	}
	return out
}

// TensorToPB converts a tensor to its wire form (sharing its data).
func TensorToPB(t kernel.Tensor) *pb.Tensor {
	return &pb.Tensor{Dtype: pb.DType(t.DType), Shape: t.Shape, Data: t.Data}
}

// TensorFromPB converts a wire tensor (sharing its data).
func TensorFromPB(t *pb.Tensor) kernel.Tensor { return tensorFromPB(t) }
