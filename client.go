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
	"github.com/gpumesh/gpumesh/pool"
)

// DefaultPort is the GPU host's port, used when a target names none.
const DefaultPort = gpusvc.DefaultPort

// Tensor is a dense row-major array; Data is little-endian. Float32s
// returns a float32 tensor's values.
type Tensor = kernel.Tensor

// Arg is one kernel argument: a tensor, a resident buffer or a number.
// Make one with F32, BufferArg, Scalar or Int.
type Arg = kernel.Arg

// Buffer is memory on the host's GPU, owned by the client's session: the
// host frees (and zeroes) it when the client closes, or when the client
// leaves its buffers unused for the host's idle timeout. It is the pool's
// buffer type, so that one Client type calls a host or a pool.
type Buffer = pool.Buffer

// F32 is a float32 tensor argument of the given shape holding v.
func F32(shape []int64, v []float32) Arg {
	return Arg{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32(shape, v)}
}

// Scalar is a floating-point argument (saxpy's a).
func Scalar(x float64) Arg { return Arg{Kind: kernel.ArgScalar, Scalar: x} }

// Int is an integer argument.
func Int(x int64) Arg { return Arg{Kind: kernel.ArgInt, Int: x} }

// BufferArg is a resident buffer read as a float32 tensor of the given shape.
func BufferArg(b Buffer, shape ...int64) Arg { return pool.BufferArg(b, shape...) }

// Option configures Dial.
type Option func(*options)

type options struct {
	ov       overlay.Overlay // WithOverlay's, for a pool's peer list; nil otherwise
	dial     gpusvc.DialFunc
	gpu      string
	grpcOpts []grpc.DialOption
}

// WithOverlay reaches the host through ov, a tailnet (or WireGuard) node
// running in this process; the target is then the host's name or overlay
// IP, or a pool target, whose hosts are found in ov's peer list.
// Without it, the target is dialed as a plain TCP address, such as a
// forwarder's "localhost:50051".
func WithOverlay(ov overlay.Overlay) Option {
	return func(o *options) { o.ov, o.dial = ov, ov.Dial }
}

// WithDialer reaches the host through dial (a single host: a pool needs
// WithOverlay).
func WithDialer(dial func(ctx context.Context, network, addr string) (net.Conn, error)) Option {
	return func(o *options) { o.ov, o.dial = nil, dial }
}

// WithGPU picks the host's GPU ("0", a UUID); the default is the host's.
func WithGPU(gpu string) Option {
	return func(o *options) { o.gpu = gpu }
}

// WithGRPCOptions adds gRPC dial options (interceptors, keepalive).
func WithGRPCOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.grpcOpts = append(o.grpcOpts, opts...) }
}

// Client calls one GPU host, or a pool of them. It is safe for concurrent
// use.
//
// On one host, Compute calls share one long-lived stream on which the host
// runs them concurrently (up to the caller's max_concurrent), and a call
// whose context ends is cancelled on the host too. The client knows the
// caller's limits from Dial: a request over max_request fails at once,
// without reaching the host, and uploads are chunked to fit.
//
// On a pool (Dial with a pool target), each stateless call goes to the host
// of the pool where it would finish first among those whose policy allows
// it, and is retried once on another if its host is lost; the buffers
// (Alloc, Upload, and Compute on them) live in one session on one host of
// the pool (see package pool).
type Client struct {
	calls  calls      // what every method goes to: host or pool
	host   *host      // nil for a pool
	pool   *pool.Pool // nil for a single host
	target string     // the pool's, as Dial was given it
}

// calls are the calls a Client makes, on one host (*host) or on a pool
// (*pool.Pool, which has the same method set).
type calls interface {
	Compute(ctx context.Context, kernelName string, args ...Arg) (Tensor, error)
	MatMul(ctx context.Context, a, b [][]float32) ([][]float32, error)
	Alloc(ctx context.Context, n uint64) (Buffer, error)
	Upload(ctx context.Context, data []byte) (Buffer, error)
	Write(ctx context.Context, b Buffer, off uint64, data []byte) error
	Read(ctx context.Context, b Buffer, off, n uint64) ([]byte, error)
	Free(ctx context.Context, b Buffer) error
	Close() error
}

var (
	_ calls = (*host)(nil)
	_ calls = (*pool.Pool)(nil)
)

// Dial connects to the GPU host at target and checks that it answers.
// target is "host:port" or "host" (port 50051): a forwarder's
// "localhost:50051", or with WithOverlay a tailnet name such as "gpu-host".
// A host whose policy gives this node no right at all refuses it here,
// with PermissionDenied and the policy's reason.
//
// With WithOverlay, target may also be a pool target (see pool.Target):
// "tag:gpu" (the peers carrying that tag), a comma list "gpu-a,gpu-b", or
// "*" (every peer), ":PORT" optional. Dial then returns once every host of
// the pool has been probed, and fails (pool.ErrNoHost, saying what each
// host answered) when none is ready.
func Dial(ctx context.Context, target string, opts ...Option) (*Client, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if target == "" {
		return nil, errors.New("gpumesh: dial: empty target")
	}
	if pool.IsTarget(target) {
		return dialPool(ctx, target, o)
	}
	h, err := dialHost(ctx, target, o)
	if err != nil {
		return nil, err
	}
	return &Client{calls: h, host: h}, nil
}

// dialPool starts a pool of the hosts target names among ov's peers.
func dialPool(ctx context.Context, target string, o options) (*Client, error) {
	nw, ok := o.ov.(pool.Network)
	if !ok {
		return nil, fmt.Errorf("gpumesh: dial %s: a pool target needs WithOverlay(node), a node that lists its peers (overlay/tsnet, overlay/wg)", target)
	}
	p, err := pool.Dial(ctx, pool.Config{Target: target, Network: nw, GPU: o.gpu, GRPCOptions: o.grpcOpts})
	if err != nil {
		return nil, fmt.Errorf("gpumesh: dial %s: %w", target, err)
	}
	return &Client{calls: p, pool: p, target: target}, nil
}

// Host is the host's name, as it reported it when the client connected;
// for a pool, the pool's target ("tag:gpu").
func (c *Client) Host() string {
	if c.pool != nil {
		return c.target
	}
	return c.host.info.GetHost()
}

// Caller is who the host says this client is: its tailnet identity, or the
// forwarding node's. For a pool it is empty: each host names the caller in
// its own answers.
func (c *Client) Caller() string {
	if c.pool != nil {
		return ""
	}
	return c.host.info.GetCaller()
}

// Pool is the pool of hosts the client calls, or nil when it calls one
// host: its hosts and their state, sessions of their own on one host
// (OpenSession), and where a call would go and why (Explain).
func (c *Client) Pool() *pool.Pool { return c.pool }

// errPool is the answer of the methods that ask one host.
func (c *Client) errPool(what string) error {
	return fmt.Errorf("gpumesh: %s asks one host; %s is a pool of hosts (Client.Pool().Hosts() describes them)", what, c.target)
}

// Devices describes the host's backend and GPUs, with live telemetry. On a
// pool it fails: Pool().Hosts() describes each host.
func (c *Client) Devices(ctx context.Context) (*pb.DevicesResponse, error) {
	if c.pool != nil {
		return nil, c.errPool("Devices")
	}
	return c.host.c.Devices(ctx)
}

// API returns the generated gRPC client, for calls this type does not
// wrap; nil for a pool, whose hosts each have their own.
func (c *Client) API() pb.GPUClient {
	if c.pool != nil {
		return nil
	}
	return c.host.api
}

// Compute runs a built-in kernel ("matrix_mul", "saxpy", "relu", ...) and
// returns its output tensor. Buffer arguments are read in the client's
// session.
func (c *Client) Compute(ctx context.Context, kernelName string, args ...Arg) (Tensor, error) {
	return c.calls.Compute(ctx, kernelName, args...)
}

// MatMul multiplies a (n×k) by b (k×m) on the host.
func (c *Client) MatMul(ctx context.Context, a, b [][]float32) ([][]float32, error) {
	return c.calls.MatMul(ctx, a, b)
}

// Alloc reserves n zeroed bytes on the GPU, in the client's session.
func (c *Client) Alloc(ctx context.Context, n uint64) (Buffer, error) { return c.calls.Alloc(ctx, n) }

// Upload allocates a buffer holding data in one round trip. If the upload
// fails part way, the host frees the buffer.
func (c *Client) Upload(ctx context.Context, data []byte) (Buffer, error) {
	return c.calls.Upload(ctx, data)
}

// Write copies data into b at byte offset off.
func (c *Client) Write(ctx context.Context, b Buffer, off uint64, data []byte) error {
	return c.calls.Write(ctx, b, off, data)
}

// Read returns n bytes of b from byte offset off; n = 0 reads to the end.
func (c *Client) Read(ctx context.Context, b Buffer, off, n uint64) ([]byte, error) {
	return c.calls.Read(ctx, b, off, n)
}

// Free releases b; the host zeroes it.
func (c *Client) Free(ctx context.Context, b Buffer) error { return c.calls.Free(ctx, b) }

// Close frees the client's buffers and ends its connections. A second
// Close returns net.ErrClosed.
func (c *Client) Close() error { return c.calls.Close() }

// host is a Client's calls on one GPU host.
type host struct {
	c    *gpusvc.Client
	api  pb.GPUClient
	gpu  string
	info *pb.DevicesResponse

	sessMu  sync.Mutex // serialises opening the session
	session uint64     // the buffers' session, 0 until the first Alloc; guarded by sessMu
	closed  bool       // guarded by sessMu
}

// dialHost connects to the host at target and asks it for its devices.
func dialHost(ctx context.Context, target string, o options) (*host, error) {
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
	return &host{c: gc, api: gc.API(), gpu: o.gpu, info: info}, nil
}

func (h *host) Compute(ctx context.Context, kernelName string, args ...Arg) (Tensor, error) {
	req := &pb.ComputeRequest{Kernel: kernelName, Args: gpusvc.ArgsToPB(args), Gpu: h.gpu}
	for _, a := range args {
		if a.Kind == kernel.ArgBuffer {
			id, err := h.sessionID(ctx)
			if err != nil {
				return Tensor{}, fmt.Errorf("gpumesh: compute %s: %w", kernelName, err)
			}
			req.Session = id
			break
		}
	}
	res, err := h.c.ComputeRequest(ctx, req)
	if err != nil {
		return Tensor{}, err
	}
	if len(res.GetOutputs()) == 0 {
		return Tensor{}, nil
	}
	return gpusvc.TensorFromPB(res.GetOutputs()[0]), nil
}

func (h *host) MatMul(ctx context.Context, a, b [][]float32) ([][]float32, error) {
	out, err := kernel.MatMul(ctx, h.Compute, a, b)
	if err != nil {
		return nil, fmt.Errorf("gpumesh: %w", err)
	}
	return out, nil
}

// sessionID opens the client's session on first use.
func (h *host) sessionID(ctx context.Context) (uint64, error) {
	h.sessMu.Lock()
	defer h.sessMu.Unlock()
	if h.closed {
		return 0, net.ErrClosed
	}
	if h.session != 0 {
		return h.session, nil
	}
	s, err := h.c.OpenSession(ctx)
	if err != nil {
		return 0, fmt.Errorf("open session: %w", err)
	}
	h.session = s.ID
	return h.session, nil
}

func (h *host) Alloc(ctx context.Context, n uint64) (Buffer, error) {
	id, err := h.sessionID(ctx)
	if err == nil {
		var b uint64
		if b, err = h.c.Alloc(ctx, id, h.gpu, n); err == nil {
			return Buffer{ID: b, Size: n}, nil
		}
	}
	return Buffer{}, fmt.Errorf("gpumesh: alloc %d bytes: %w", n, err)
}

func (h *host) Write(ctx context.Context, b Buffer, off uint64, data []byte) error {
	id, err := h.sessionID(ctx)
	if err == nil {
		if _, err = h.c.Write(ctx, id, b.ID, off, bytes.NewReader(data)); err == nil {
			return nil
		}
	}
	return fmt.Errorf("gpumesh: write %d bytes to buffer %d: %w", len(data), b.ID, err)
}

func (h *host) Upload(ctx context.Context, data []byte) (Buffer, error) {
	if len(data) == 0 {
		return Buffer{}, errors.New("gpumesh: upload: no data")
	}
	id, err := h.sessionID(ctx)
	if err == nil {
		var b uint64
		if b, err = h.c.Upload(ctx, id, h.gpu, uint64(len(data)), bytes.NewReader(data)); err == nil {
			return Buffer{ID: b, Size: uint64(len(data))}, nil
		}
	}
	return Buffer{}, fmt.Errorf("gpumesh: upload %d bytes: %w", len(data), err)
}

func (h *host) Read(ctx context.Context, b Buffer, off, n uint64) ([]byte, error) {
	id, err := h.sessionID(ctx)
	if err == nil {
		var out bytes.Buffer
		out.Grow(int(min(n, 64<<20)))
		if _, err = h.c.Read(ctx, id, b.ID, off, n, &out); err == nil {
			return out.Bytes(), nil
		}
	}
	return nil, fmt.Errorf("gpumesh: read buffer %d: %w", b.ID, err)
}

func (h *host) Free(ctx context.Context, b Buffer) error {
	id, err := h.sessionID(ctx)
	if err == nil {
		if err = h.c.Free(ctx, id, b.ID); err == nil {
			return nil
		}
	}
	return fmt.Errorf("gpumesh: free buffer %d: %w", b.ID, err)
}

// Close closes the session, freeing its buffers, and the connection. A
// second Close returns net.ErrClosed.
func (h *host) Close() error {
	h.sessMu.Lock()
	if h.closed {
		h.sessMu.Unlock()
		return net.ErrClosed
	}
	h.closed = true
	id := h.session
	h.sessMu.Unlock()
	var errs []error
	if id != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := h.c.CloseSession(ctx, id); err != nil {
			errs = append(errs, fmt.Errorf("gpumesh: close session: %w", err))
		}
		cancel()
	}
	if err := h.c.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
