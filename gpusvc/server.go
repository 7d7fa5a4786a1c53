package gpusvc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"

	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/policy"
)

// DefaultPort is the TCP port the compute endpoint listens on inside the overlay.
const DefaultPort = 50051

// Transport tuning, measured over tsnet: gRPC streaming of 1 MiB chunks
// reaches 0.90–0.97 of raw tsnet TCP with 16 MiB stream and connection
// windows and 1 MiB buffers (0.81–0.89 with gRPC's defaults).
const (
	windowSize = 16 << 20
	bufferSize = 1 << 20
)

// Defaults for Config's zero values.
const (
	// DefaultMaxRequestBytes caps one request message.
	DefaultMaxRequestBytes = 64 << 20
	// DefaultMaxResponseBytes caps one kernel output returned in a
	// response (larger ones go into a buffer, out_buffer).
	DefaultMaxResponseBytes = 256 << 20
	// DefaultMaxStreamsPerConn is gRPC's MaxConcurrentStreams: RPCs one
	// connection may have open; a client queues more.
	DefaultMaxStreamsPerConn = 128
	// DefaultMaxStreamsPerCaller caps the RPCs one identity has open
	// across its connections; more are refused before they are read.
	DefaultMaxStreamsPerCaller = 256
	// DefaultMaxConnsPerCaller caps one identity's connections.
	DefaultMaxConnsPerCaller = 32
	// DefaultMaxConnsPerAgent caps the connections one trusted
	// Kubernetes agent holds for all its pods and itself together (a
	// node runs at most 110 pods by default; a Go client uses two
	// connections): a compromised agent cannot make up pods without end.
	DefaultMaxConnsPerAgent = 1024
)

// Config configures a Server. Only Backend and WhoIs are required.
type Config struct {
	// Backend runs the kernels. Required.
	Backend Backend
	// WhoIs identifies callers from their overlay address. Required.
	WhoIs WhoIsFunc
	// Policy returns the policy in force; it is asked on every call, so a
	// reload applies to the next call. nil, or a nil result, denies all.
	Policy func() *policy.Policy
	// Host is this node's name, reported by Devices.
	Host string
	// MaxRequestBytes caps one request message; larger ones fail with
	// ResourceExhausted. 0 means DefaultMaxRequestBytes. A policy rule
	// may set a lower cap per caller.
	MaxRequestBytes int64
	// MaxCUDARequestBytes caps one cuda.CUDAService request, checked
	// before it is decoded (its params take about ten times their size in
	// memory); larger ones fail with ResourceExhausted. 0 means
	// DefaultMaxCUDARequestBytes; at most MaxRequestBytes.
	MaxCUDARequestBytes int64
	// MaxResponseBytes caps a kernel output returned in a response. 0
	// means DefaultMaxResponseBytes.
	MaxResponseBytes int64
	// MaxMemory is the host's budget for what callers make it hold:
	// resident buffers (each with a small overhead), kernel outputs and
	// queued requests in flight, on top of each identity's max_memory. A
	// call that would exceed it is refused with ResourceExhausted. 0 means
	// DefaultMaxMemory of the backend's devices.
	MaxMemory int64
	// MaxStreamsPerConn, MaxStreamsPerCaller and MaxConnsPerCaller bound
	// what one connection and one identity hold open; 0 means the
	// Default… constants.
	MaxStreamsPerConn   int
	MaxStreamsPerCaller int
	MaxConnsPerCaller   int
	// MaxConnsPerAgent bounds the connections of one trusted Kubernetes
	// agent, its pods' included, taken before its preface is read; 0
	// means DefaultMaxConnsPerAgent.
	MaxConnsPerAgent int
	// StreamConcurrency is how many calls of one Stream run at once (a
	// rule's lower max_concurrent wins). 0 means DefaultStreamConcurrency.
	StreamConcurrency int
	// IdentityTTL is how long a connection's identity is used before the
	// overlay is asked again. 0 means 5s.
	IdentityTTL time.Duration
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// OnCall, if set, is called once for every finished call (audit,
	// metrics), refused ones included. It must not block.
	OnCall func(CallRecord)
	// WrapConn, if set, wraps each accepted connection once its peer is
	// identified: QoS schedules the host's replies by the caller's class.
	// If the connection it returns implements ClassSetter, each call's
	// decision sets its class.
	WrapConn func(c net.Conn, caller overlay.Identity) net.Conn
	// DefaultIdleTimeout ends sessions idle this long when the caller's
	// policy rule sets no idle_timeout. 0 means DefaultIdleTimeout (10m).
	DefaultIdleTimeout time.Duration
}

// CallRecord describes one finished call. It holds no tensor data, and its
// strings are bounded: a name a client sent is cut short.
type CallRecord struct {
	Time     time.Time
	Caller   overlay.Identity
	Method   string // "Compute", "Alloc", ...; "connect" for a refused connection
	Kernel   string
	GPU      string // the canonical index when the name resolved
	BytesIn  int64
	BytesOut int64
	Duration time.Duration
	Allow    bool
	Rule     string
	Reason   string
	Class    string // the QoS class of the deciding rule
	Code     codes.Code
	Err      string
	// Suppressed counts attempts like this one (refused before they were
	// read) by the same caller that were not recorded one by one.
	Suppressed int64
}

// Server is the gpumesh compute service.
type Server struct {
	pb.UnimplementedGPUServer

	cfg       Config
	log       *slog.Logger
	devices   *devices
	quotas    *quotas
	sessions  *sessions
	admission *admission
	refusals  *refusals
	pods      pods // Kubernetes pods' connections and releases (pods.go)
	health    *health
	sampler   *sampler
	resident  []string // the rights any of which lets a caller hold buffers
	grpc      *grpc.Server

	inFlight atomic.Int64 // calls begun and not ended
	queued   atomic.Int64 // stream calls waiting for a slot
}

// NewServer validates cfg and returns a server; call Serve to start it.
// It asks the backend for its devices once: their indices and UUIDs are
// what requests' GPU names resolve to.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Backend == nil {
		return nil, errors.New("gpusvc: a backend is required")
	}
	if cfg.WhoIs == nil {
		return nil, errors.New("gpusvc: a WhoIs function is required")
	}
	if cfg.Policy == nil {
		cfg.Policy = func() *policy.Policy { return nil }
	}
	def := func(v *int64, d int64) {
		if *v <= 0 {
			*v = d
		}
	}
	defInt := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&cfg.MaxRequestBytes, DefaultMaxRequestBytes)
	if cfg.MaxRequestBytes > math.MaxInt32 {
		return nil, fmt.Errorf("gpusvc: max request size %d is over 2 GiB", cfg.MaxRequestBytes)
	}
	def(&cfg.MaxCUDARequestBytes, DefaultMaxCUDARequestBytes)
	cfg.MaxCUDARequestBytes = min(cfg.MaxCUDARequestBytes, cfg.MaxRequestBytes)
	def(&cfg.MaxResponseBytes, DefaultMaxResponseBytes)
	if cfg.MaxResponseBytes > math.MaxInt32-(1<<20) {
		return nil, fmt.Errorf("gpusvc: max response size %d is over 2 GiB", cfg.MaxResponseBytes)
	}
	defInt(&cfg.MaxStreamsPerConn, DefaultMaxStreamsPerConn)
	defInt(&cfg.MaxStreamsPerCaller, DefaultMaxStreamsPerCaller)
	defInt(&cfg.MaxConnsPerCaller, DefaultMaxConnsPerCaller)
	defInt(&cfg.MaxConnsPerAgent, DefaultMaxConnsPerAgent)
	defInt(&cfg.StreamConcurrency, DefaultStreamConcurrency)
	if cfg.IdentityTTL <= 0 {
		cfg.IdentityTTL = 5 * time.Second
	}
	if cfg.DefaultIdleTimeout <= 0 {
		cfg.DefaultIdleTimeout = DefaultIdleTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	devs := newDevices(ctx, cfg.Backend)
	def(&cfg.MaxMemory, DefaultMaxMemory(devs.info))
	s := &Server{
		cfg: cfg, log: log, devices: devs, quotas: newQuotas(cfg.MaxMemory), admission: newAdmission(),
		resident: append(policy.BuiltinKernels(), policy.KernelCustomPTX, policy.KernelCustomCUDA),
	}
	s.refusals = newRefusals(s.emit)
	s.health, s.sampler = newHealth(s), newSampler()
	mem, _ := cfg.Backend.(Memory)
	s.sessions = newSessions(mem, s.quotas, log, cfg.DefaultIdleTimeout)
	s.grpc = grpc.NewServer(
		grpc.Creds(overlayCreds{srv: s}),
		grpc.InTapHandle(s.tap),
		grpc.StatsHandler(rpcStats{s}),
		grpc.UnknownServiceHandler(s.unknown),
		grpc.MaxConcurrentStreams(uint32(cfg.MaxStreamsPerConn)),
		grpc.ChainUnaryInterceptor(s.unaryEntry),
		grpc.ChainStreamInterceptor(s.streamEntry),
		grpc.MaxRecvMsgSize(int(cfg.MaxRequestBytes)),
		grpc.ForceServerCodecV2(newServerCodec()), // checks cuda.CUDAService's cap before decoding
		grpc.MaxSendMsgSize(math.MaxInt32),
		grpc.InitialWindowSize(windowSize),
		grpc.InitialConnWindowSize(windowSize),
		grpc.ReadBufferSize(bufferSize),
		grpc.WriteBufferSize(bufferSize),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	)
	s.register()
	return s, nil
}

// policy is the policy in force.
func (s *Server) policy() *policy.Policy { return s.cfg.Policy() }

// Serve accepts connections on ln (an overlay listener) until Stop.
func (s *Server) Serve(ln net.Listener) error { return s.grpc.Serve(ln) }

// Stop ends all connections and calls now, and every session: their
// buffers are freed.
func (s *Server) Stop() {
	s.health.stop()
	s.grpc.Stop()
	s.stopped()
}

// stopped frees what the server holds once no call runs, and writes the
// records still held back.
func (s *Server) stopped() {
	s.sessions.close()
	s.refusals.close()
	for _, r := range s.sampler.flush() {
		s.emit(r)
	}
}

// GracefulStop stops accepting and waits for calls in flight, at most
// until ctx is done, then stops hard. The health service reports
// NOT_SERVING from its start, and its watches end.
func (s *Server) GracefulStop(ctx context.Context) {
	s.health.stop()
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.grpc.Stop()
		<-done
	}
	s.stopped()
}
