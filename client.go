package gpumesh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/gpumesh/gpumesh/gpusvc"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/overlay"
)

// DefaultPort is the GPU host's port, used when a target names none.
const DefaultPort = gpusvc.DefaultPort

// Tensor is a dense row-major array; Data is little-endian. Float32s
// returns a float32 tensor's values.
type Tensor = kernel.Tensor

// Arg is one kernel argument: a tensor, a resident buffer or a number.
// Make one with F32, BufferArg, Scalar or Int.
type Arg = kernel.Arg

// F32 is a float32 tensor argument of the given shape holding v.
func F32(shape []int64, v []float32) Arg {
	return Arg{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32(shape, v)}
}

// Scalar is a floating-point argument (saxpy's a).
func Scalar(x float64) Arg { return Arg{Kind: kernel.ArgScalar, Scalar: x} }

// Int is an integer argument.
func Int(x int64) Arg { return Arg{Kind: kernel.ArgInt, Int: x} }

// BufferArg is a resident buffer read as a float32 tensor of the given shape.
func BufferArg(b Buffer, shape ...int64) Arg {
	return Arg{Kind: kernel.ArgBuffer, Buffer: b.ID, Tensor: kernel.Tensor{DType: kernel.Float32, Shape: shape}}
}

// Option configures Dial.
type Option func(*options)

type options struct {
	dial     gpusvc.DialFunc
	gpu      string
	grpcOpts []grpc.DialOption
}

// WithOverlay reaches the host through ov, a tailnet (or WireGuard) node
// running in this process; the target is then the host's name or overlay
// IP. Without it, the target is dialed as a plain TCP address, such as a
// forwarder's "localhost:50051".
func WithOverlay(ov overlay.Overlay) Option {
	return func(o *options) { o.dial = ov.Dial }
}

// WithDialer reaches the host through dial.
func WithDialer(dial func(ctx context.Context, network, addr string) (net.Conn, error)) Option {
	return func(o *options) { o.dial = dial }
}

// WithGPU picks the host's GPU ("0", a UUID); the default is the host's.
func WithGPU(gpu string) Option {
	return func(o *options) { o.gpu = gpu }
}

// WithGRPCOptions adds gRPC dial options (interceptors, keepalive).
func WithGRPCOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.grpcOpts = append(o.grpcOpts, opts...) }
}

// Client calls one GPU host. It is safe for concurrent use: Compute calls
// share one long-lived stream on which the host runs them concurrently (up
// to the caller's max_concurrent), and a call whose context ends is
// cancelled on the host too. The client knows the caller's limits from
// Dial: a request over max_request fails at once, without reaching the
// host, and uploads are chunked to fit.
type Client struct {
	c    *gpusvc.Client
	api  pb.GPUClient
	gpu  string
	info *pb.DevicesResponse

	sessMu  sync.Mutex // serialises opening the session
	session uint64     // the buffers' session, 0 until the first Alloc; guarded by sessMu
	closed  bool       // guarded by sessMu
}

// Dial connects to the GPU host at target and checks that it answers.
// target is "host:port" or "host" (port 50051): a forwarder's
// "localhost:50051", or with WithOverlay a tailnet name such as "gpu-host".
// A host whose policy gives this node no right at all refuses it here,
// with PermissionDenied and the policy's reason.
func Dial(ctx context.Context, target string, opts ...Option) (*Client, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if target == "" {
		return nil, errors.New("gpumesh: dial: empty target")
	}
	if _, _, err := net.SplitHostPort(target); err != nil {
		target = net.JoinHostPort(target, strconv.Itoa(DefaultPort))
	}
	dial := o.dial
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	gc, err := gpusvc.NewClient(target, dial, o.grpcOpts...)
	if err != nil {
		return nil, fmt.Errorf("gpumesh: dial %s: %w", target, err)
	}
	info, err := gc.Devices(ctx)
	if err != nil {
		gc.Close()
		return nil, fmt.Errorf("gpumesh: dial %s: %w", target, err)
	}
	return &Client{c: gc, api: gc.API(), gpu: o.gpu, info: info}, nil
}

// Host is the host's name, as it reported it when the client connected.
func (c *Client) Host() string { return c.info.GetHost() }

// Caller is who the host says this client is: its tailnet identity, or the
// forwarding node's.
func (c *Client) Caller() string { return c.info.GetCaller() }

// Devices describes the host's backend and GPUs, with live telemetry.
func (c *Client) Devices(ctx context.Context) (*pb.DevicesResponse, error) {
	return c.c.Devices(ctx)
}

// API returns the generated gRPC client, for calls this type does not wrap.
func (c *Client) API() pb.GPUClient { return c.api }

// Compute runs a built-in kernel ("matrix_mul", "saxpy", "relu", ...) and
// returns its output tensor.
func (c *Client) Compute(ctx context.Context, kernelName string, args ...Arg) (Tensor, error) {
	req := &pb.ComputeRequest{Kernel: kernelName, Args: gpusvc.ArgsToPB(args), Gpu: c.gpu}
	for _, a := range args {
		if a.Kind == kernel.ArgBuffer {
			id, err := c.sessionID(ctx)
			if err != nil {
				return Tensor{}, fmt.Errorf("gpumesh: compute %s: %w", kernelName, err)
			}
			req.Session = id
			break
		}
	}
	res, err := c.c.ComputeRequest(ctx, req)
	if err != nil {
		return Tensor{}, err
	}
	if len(res.GetOutputs()) == 0 {
		return Tensor{}, nil
	}
	return gpusvc.TensorFromPB(res.GetOutputs()[0]), nil
}

// MatMul multiplies a (n×k) by b (k×m) on the host.
func (c *Client) MatMul(ctx context.Context, a, b [][]float32) ([][]float32, error) {
	fa, n, k, err := flatten(a)
	if err != nil {
		return nil, fmt.Errorf("gpumesh: matmul: a: %w", err)
	}
	fb, k2, m, err := flatten(b)
	if err != nil {
		return nil, fmt.Errorf("gpumesh: matmul: b: %w", err)
	}
	if k != k2 {
		return nil, fmt.Errorf("gpumesh: matmul: a is %d×%d, b is %d×%d: inner dimensions differ", n, k, k2, m)
	}
	t, err := c.Compute(ctx, "matrix_mul", F32([]int64{int64(n), int64(k)}, fa), F32([]int64{int64(k), int64(m)}, fb))
	if err != nil {
		return nil, err
	}
	v := t.Float32s()
	if len(v) != n*m {
		return nil, fmt.Errorf("gpumesh: matmul: host returned %d values for a %d×%d result", len(v), n, m)
	}
	out := make([][]float32, n)
	for i := range out {
		out[i] = v[i*m : (i+1)*m : (i+1)*m]
	}
	return out, nil
}

// flatten checks that x is a non-empty rectangle and returns it row-major.
func flatten(x [][]float32) (flat []float32, rows, cols int, err error) {
	if len(x) == 0 || len(x[0]) == 0 {
		return nil, 0, 0, errors.New("empty matrix")
	}
	rows, cols = len(x), len(x[0])
	flat = make([]float32, 0, rows*cols)
	for i, r := range x {
		if len(r) != cols {
			return nil, 0, 0, fmt.Errorf("row %d has %d columns, row 0 has %d", i, len(r), cols)
		}
		flat = append(flat, r...)
	}
	return flat, rows, cols, nil
}

// Buffer is memory on the host's GPU, owned by the client's session: the
// host frees (and zeroes) it when the client closes, or when the client
// leaves its buffers unused for the host's idle timeout.
type Buffer struct {
	ID   uint64
	Size uint64
}

// sessionID opens the client's session on first use.
func (c *Client) sessionID(ctx context.Context) (uint64, error) {
	c.sessMu.Lock()
	defer c.sessMu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	if c.session != 0 {
		return c.session, nil
	}
	s, err := c.c.OpenSession(ctx)
	if err != nil {
		return 0, fmt.Errorf("open session: %w", err)
	}
	c.session = s.ID
	return c.session, nil
}

// Alloc reserves n zeroed bytes on the GPU.
func (c *Client) Alloc(ctx context.Context, n uint64) (Buffer, error) {
	id, err := c.sessionID(ctx)
	if err == nil {
		var b uint64
		if b, err = c.c.Alloc(ctx, id, c.gpu, n); err == nil {
			return Buffer{ID: b, Size: n}, nil
		}
	}
	return Buffer{}, fmt.Errorf("gpumesh: alloc %d bytes: %w", n, err)
}

// Write copies data into b at byte offset off.
func (c *Client) Write(ctx context.Context, b Buffer, off uint64, data []byte) error {
	id, err := c.sessionID(ctx)
	if err == nil {
		if _, err = c.c.Write(ctx, id, b.ID, off, bytes.NewReader(data)); err == nil {
			return nil
		}
	}
	return fmt.Errorf("gpumesh: write %d bytes to buffer %d: %w", len(data), b.ID, err)
}

// Upload allocates a buffer holding data in one round trip. If the upload
// fails part way, the host frees the buffer.
func (c *Client) Upload(ctx context.Context, data []byte) (Buffer, error) {
	if len(data) == 0 {
		return Buffer{}, errors.New("gpumesh: upload: no data")
	}
	id, err := c.sessionID(ctx)
	if err == nil {
		var b uint64
		if b, err = c.c.Upload(ctx, id, c.gpu, uint64(len(data)), bytes.NewReader(data)); err == nil {
			return Buffer{ID: b, Size: uint64(len(data))}, nil
		}
	}
	return Buffer{}, fmt.Errorf("gpumesh: upload %d bytes: %w", len(data), err)
}

// Read returns n bytes of b from byte offset off; n = 0 reads to the end.
func (c *Client) Read(ctx context.Context, b Buffer, off, n uint64) ([]byte, error) {
	id, err := c.sessionID(ctx)
	if err == nil {
		var out bytes.Buffer
		out.Grow(int(min(n, 64<<20)))
		if _, err = c.c.Read(ctx, id, b.ID, off, n, &out); err == nil {
			return out.Bytes(), nil
		}
	}
	return nil, fmt.Errorf("gpumesh: read buffer %d: %w", b.ID, err)
}

// Free releases b; the host zeroes it.
func (c *Client) Free(ctx context.Context, b Buffer) error {
	id, err := c.sessionID(ctx)
	if err == nil {
		if err = c.c.Free(ctx, id, b.ID); err == nil {
			return nil
		}
	}
	return fmt.Errorf("gpumesh: free buffer %d: %w", b.ID, err)
}

// Close frees the client's buffers and ends its connection. A second
// Close returns net.ErrClosed.
func (c *Client) Close() error {
	c.sessMu.Lock()
	if c.closed {
		c.sessMu.Unlock()
		return net.ErrClosed
	}
	c.closed = true
	id := c.session
	c.sessMu.Unlock()
	var errs []error
	if id != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := c.c.CloseSession(ctx, id); err != nil {
			errs = append(errs, fmt.Errorf("gpumesh: close session: %w", err))
		}
		cancel()
	}
	if err := c.c.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
