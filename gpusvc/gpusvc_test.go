package gpusvc_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
	"github.com/gpumesh/gpumesh/policy"
)

const testPolicy = `
version = 1

rule "laptop" {
  subjects = ["laptop"]
  gpus     = ["*"]
  kernels  = ["*"]
}

rule "quota" {
  subjects       = ["busy"]
  gpus           = ["*"]
  kernels        = ["*"]
  max_concurrent = 2
}

rule "rate" {
  subjects = ["eager"]
  gpus     = ["*"]
  kernels  = ["*"]
  rate     = 5
  burst    = 2
}
`

// world is a tailnet with a GPU host serving the CPU backend and a few
// client nodes, started once for the tests in this file.
type world struct {
	tn      *overlaytest.Tailnet
	host    *tsnet.Node
	clients map[string]*gpusvc.Client
	// clientNodes are the clients' tailnet nodes, for raw connections.
	clientNodes map[string]*tsnet.Node
	srv         *gpusvc.Server
	backend     *gate

	logMu sync.Mutex
	log   bytes.Buffer // the server's log; guarded by logMu

	recMu   sync.Mutex
	records []gpusvc.CallRecord // guarded by recMu
}

func (w *world) logged() string {
	w.logMu.Lock()
	defer w.logMu.Unlock()
	return w.log.String()
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// gate wraps the CPU backend; while a test holds it closed, calls of the
// kernel "relu" block, so calls can be held in flight deterministically.
type gate struct {
	*cpu.Backend
	mu      sync.Mutex
	closed  chan struct{} // nil when open
	entered chan struct{}
}

func (g *gate) Compute(ctx context.Context, c gpusvc.Call) (kernel.Tensor, error) {
	g.mu.Lock()
	wait, entered := g.closed, g.entered
	g.mu.Unlock()
	if wait != nil && c.Kernel == "relu" {
		entered <- struct{}{}
		select {
		case <-wait:
		case <-ctx.Done():
			return kernel.Tensor{}, ctx.Err()
		}
	}
	return g.Backend.Compute(ctx, c)
}

func (g *gate) close() (entered <-chan struct{}, open func()) {
	g.mu.Lock()
	defer g.mu.Unlock()
	ch := make(chan struct{})
	g.closed, g.entered = ch, make(chan struct{}, 16)
	return g.entered, func() {
		g.mu.Lock()
		g.closed = nil
		g.mu.Unlock()
		close(ch)
	}
}

const maxRequest = 4 << 20

func startWorld(t testing.TB, clients ...string) *world {
	t.Helper()
	return startWorldWith(t, testPolicy, nil, clients...)
}

// startWorldWith starts a world whose host serves the policy src, its
// config changed by adjust (when not nil).
func startWorldWith(t testing.TB, src string, adjust func(*gpusvc.Config), clients ...string) *world {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tn, err := overlaytest.Start(overlaytest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tn.Close() })
	w := &world{tn: tn, clients: map[string]*gpusvc.Client{}, clientNodes: map[string]*tsnet.Node{}, backend: &gate{Backend: cpu.New()}}

	pol, err := policy.Parse("test.hcl", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	names := append([]string{"gpu-host"}, clients...)
	nodes := make([]*tsnet.Node, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nodes[i], errs[i] = tn.Join(ctx, name)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nodes[i].Close() })
	}
	w.host = nodes[0]

	// Tests read the per-call debug lines; benchmarks log as `serve` does
	// by default (info), so formatting a line per call is not measured.
	level := slog.LevelDebug
	if _, bench := t.(*testing.B); bench {
		level = slog.LevelInfo
	}
	cfg := gpusvc.Config{
		Backend:         w.backend,
		WhoIs:           w.host.WhoIs,
		Policy:          func() *policy.Policy { return pol },
		Host:            "gpu-host",
		MaxRequestBytes: maxRequest,
		Logger:          slog.New(slog.NewTextHandler(lockedWriter{&w.logMu, &w.log}, &slog.HandlerOptions{Level: level})),
		OnCall: func(r gpusvc.CallRecord) {
			w.recMu.Lock()
			w.records = append(w.records, r)
			w.recMu.Unlock()
		},
	}
	if adjust != nil {
		adjust(&cfg)
	}
	w.srv, err = gpusvc.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := w.host.Listen("tcp", ":"+strconv.Itoa(gpusvc.DefaultPort))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		w.srv.Serve(ln)
	}()
	t.Cleanup(func() {
		w.srv.Stop()
		<-served
	})
	for i, name := range clients {
		c, err := gpusvc.NewClient("gpu-host:"+strconv.Itoa(gpusvc.DefaultPort), nodes[i+1].Dial)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		w.clients[name] = c
		w.clientNodes[name] = nodes[i+1]
	}
	return w
}

func f32(shape []int64, v ...float32) kernel.Arg {
	if v == nil {
		n := int64(1)
		for _, d := range shape {
			n *= d
		}
		v = make([]float32, n)
		for i := range v {
			v[i] = float32(i%7) - 3
		}
	}
	return kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32(shape, v)}
}

func scalar(x float64) kernel.Arg { return kernel.Arg{Kind: kernel.ArgScalar, Scalar: x} }

func TestEndToEnd(t *testing.T) {
	w := startWorld(t, "laptop", "stranger", "busy", "eager")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	laptop := w.clients["laptop"]

	t.Run("matrix_mul", func(t *testing.T) {
		a := f32([]int64{2, 3}, 1, 2, 3, 4, 5, 6)
		b := f32([]int64{3, 2}, 7, 8, 9, 10, 11, 12)
		got, err := laptop.Compute(ctx, "matrix_mul", a, b)
		if err != nil {
			t.Fatal(err)
		}
		want := []float32{58, 64, 139, 154}
		if fmt.Sprint(got.Shape) != "[2 2]" || fmt.Sprint(got.Float32s()) != fmt.Sprint(want) {
			t.Fatalf("matrix_mul = %v %v; want [2 2] %v", got.Shape, got.Float32s(), want)
		}
		// The same through a unary call.
		res, err := laptop.ComputeUnary(ctx, &pb.ComputeRequest{Kernel: "matrix_mul", Args: gpusvc.ArgsToPB([]kernel.Arg{a, b})})
		if err != nil {
			t.Fatal(err)
		}
		if u := gpusvc.TensorFromPB(res.Outputs[0]).Float32s(); fmt.Sprint(u) != fmt.Sprint(want) {
			t.Fatalf("unary matrix_mul = %v; want %v", u, want)
		}
	})

	t.Run("saxpy", func(t *testing.T) {
		got, err := laptop.Compute(ctx, "saxpy", scalar(2), f32([]int64{3}, 1, 2, 3), f32([]int64{3}, 10, 20, 30))
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got.Float32s()) != "[12 24 36]" {
			t.Fatalf("saxpy = %v; want [12 24 36]", got.Float32s())
		}
	})

	t.Run("identity comes from the tailnet", func(t *testing.T) {
		dev, err := laptop.Devices(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if dev.Caller != "laptop" || dev.Backend != "cpu" || dev.Host != "gpu-host" {
			t.Errorf("Devices = caller %q backend %q host %q", dev.Caller, dev.Backend, dev.Host)
		}
		if !strings.Contains(w.logged(), "caller=laptop method=Compute kernel=matrix_mul") {
			t.Errorf("server log does not attribute the matrix_mul to laptop:\n%s", w.logged())
		}
	})

	t.Run("stranger is denied", func(t *testing.T) {
		_, err := w.clients["stranger"].Compute(ctx, "matrix_mul", f32([]int64{2, 2}), f32([]int64{2, 2}))
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("stranger: %v; want PermissionDenied", err)
		}
		msg := status.Convert(err).Message()
		if !strings.Contains(msg, "denied by gpu-host's policy") || !strings.Contains(msg, "stranger") || !strings.Contains(msg, "default deny") {
			t.Errorf("denial message %q does not name the caller and the decision", msg)
		}
		// A refusal at admission is recorded by the host's refusal
		// recorder, a goroutine of its own: the line may follow the answer.
		eventually(t, "the server log names the stranger", func() bool { return strings.Contains(w.logged(), "caller=stranger") })
	})

	t.Run("bad input", func(t *testing.T) {
		empty := kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.Tensor{DType: kernel.Float32, Shape: []int64{0}}}
		short := kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.Tensor{DType: kernel.Float32, Shape: []int64{4}, Data: make([]byte, 8)}}
		for _, tc := range []struct {
			name   string
			kernel string
			args   []kernel.Arg
			code   codes.Code
			msg    string
		}{
			{"wrong shapes", "matrix_mul", []kernel.Arg{f32([]int64{2, 3}), f32([]int64{2, 3})}, codes.InvalidArgument, "inner dimensions differ"},
			{"empty tensor", "relu", []kernel.Arg{empty}, codes.InvalidArgument, "dimensions must be positive"},
			{"data shorter than shape", "relu", []kernel.Arg{short}, codes.InvalidArgument, "needs 16 bytes, got 8"},
			{"mismatched lengths", "saxpy", []kernel.Arg{scalar(1), f32([]int64{3}), f32([]int64{4})}, codes.InvalidArgument, "x has 3 elements, y has 4"},
			{"unknown kernel", "conv9d", []kernel.Arg{f32([]int64{1})}, codes.InvalidArgument, `unknown kernel "conv9d"`},
			// Refused by the client: it never reaches the shared stream.
			{"oversized request", "relu", []kernel.Arg{f32([]int64{maxRequest/4 + 1})}, codes.ResourceExhausted, "over the host's max_request"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := laptop.Compute(ctx, tc.kernel, tc.args...)
				if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.msg) {
					t.Fatalf("got %v; want %v containing %q", err, tc.code, tc.msg)
				}
				// The server keeps serving; the client reopens its stream if the
				// server ended it (an oversized message ends the stream).
				if _, err := laptop.Compute(ctx, "relu", f32([]int64{4})); err != nil {
					t.Fatalf("call after bad input: %v", err)
				}
			})
		}
	})

	t.Run("max_concurrent", func(t *testing.T) {
		busy := w.clients["busy"]
		entered, open := w.backend.close()
		var wg sync.WaitGroup
		errs := make(chan error, 2)
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := busy.ComputeUnary(ctx, &pb.ComputeRequest{Kernel: "relu", Args: gpusvc.ArgsToPB([]kernel.Arg{f32([]int64{4})})})
				errs <- err
			}()
		}
		<-entered
		<-entered
		_, err := busy.ComputeUnary(ctx, &pb.ComputeRequest{Kernel: "relu", Args: gpusvc.ArgsToPB([]kernel.Arg{f32([]int64{4})})})
		// Others are unaffected while busy is at its limit.
		_, lerr := laptop.Compute(ctx, "saxpy", scalar(1), f32([]int64{2}), f32([]int64{2}))
		open()
		wg.Wait()
		close(errs)
		if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "max_concurrent = 2") {
			t.Errorf("third concurrent call: %v; want ResourceExhausted naming max_concurrent", err)
		}
		if lerr != nil {
			t.Errorf("laptop while busy is at its limit: %v", lerr)
		}
		for err := range errs {
			if err != nil {
				t.Errorf("call within the limit: %v", err)
			}
		}
	})

	t.Run("rate", func(t *testing.T) {
		eager := w.clients["eager"]
		call := func() error {
			_, err := eager.Compute(ctx, "relu", f32([]int64{4}))
			return err
		}
		var refused error
		for i := range 10 {
			if err := call(); err != nil {
				if i < 2 {
					t.Fatalf("call %d within the burst: %v", i, err)
				}
				refused = err
				break
			}
		}
		if status.Code(refused) != codes.ResourceExhausted || !strings.Contains(refused.Error(), "rate = 5") {
			t.Fatalf("burst beyond the rate: %v; want ResourceExhausted naming the rate", refused)
		}
		// Tokens come back at 5/s: a later call succeeds.
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			if err := call(); err == nil {
				break
			} else if status.Code(err) != codes.ResourceExhausted {
				t.Fatal(err)
			}
			select {
			case <-ctx.Done():
				t.Fatal("no call succeeded after the rate refill")
			case <-tick.C:
			}
		}
	})
}

// TestNotReachableOutsideTailnet: the endpoint listens in the node's own
// network stack; loopback and the host's addresses do not lead to it.
func TestNotReachableOutsideTailnet(t *testing.T) {
	w := startWorld(t, "laptop")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := w.clients["laptop"].Devices(ctx); err != nil {
		t.Fatalf("through the tailnet: %v", err)
	}
	addrs := []string{"127.0.0.1", "::1"}
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range ifaddrs {
		if ipn, ok := a.(*net.IPNet); ok {
			addrs = append(addrs, ipn.IP.String())
		}
	}
	for _, a := range addrs {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(a, strconv.Itoa(gpusvc.DefaultPort)), time.Second)
		if err == nil {
			c.Close()
			t.Errorf("the endpoint answered on %s, outside the tailnet", a)
		}
	}
}
