package gpusvc_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cudapb"
	"github.com/gpumesh/gpumesh/overlay"
)

const doorPolicy = `
version = 1

class "interactive" {
  dscp = "EF"
}

rule "laptop" {
  subjects = ["laptop"]
  gpus     = ["*"]
  kernels  = ["*"]
  class    = "interactive"
}

rule "narrow" {
  subjects = ["narrow"]
  gpus     = ["*"]
  kernels  = ["relu"]
}

rule "busy" {
  subjects       = ["busy"]
  gpus           = ["*"]
  kernels        = ["*"]
  max_concurrent = 2
}

rule "eager" {
  subjects = ["eager"]
  gpus     = ["*"]
  kernels  = ["*"]
  rate     = 0.01
  burst    = 2
}
`

// doorCap is the test host's cap on a cuda.CUDAService request.
const doorCap = 64 << 10

// classes records the QoS class each caller's connection was last given.
type classes struct {
	mu   sync.Mutex
	last map[string]string // by node name; guarded by mu
}

func (cl *classes) wrap(c net.Conn, id overlay.Identity) net.Conn {
	return &classConn{Conn: c, node: id.Node, cl: cl}
}

func (cl *classes) of(node string) string {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.last[node]
}

type classConn struct {
	net.Conn
	node string
	cl   *classes
}

func (c *classConn) SetClass(class string) {
	c.cl.mu.Lock()
	defer c.cl.mu.Unlock()
	c.cl.last[c.node] = class
}

// conn is a plain gRPC connection from the node name to the host, as any
// generated client (cuda_pb2_grpc, grpcurl, a health probe) makes one.
func (w *world) conn(t testing.TB, name string) *grpc.ClientConn {
	t.Helper()
	node := w.clientNodes[name]
	cc, err := grpc.NewClient("passthrough:///gpu-host:50051",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return node.Dial(ctx, "tcp", addr)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// recordsOf returns the records of method made for caller.
func (w *world) recordsOf(caller, method string) []gpusvc.CallRecord {
	w.recMu.Lock()
	defer w.recMu.Unlock()
	var out []gpusvc.CallRecord
	for _, r := range w.records {
		if r.Caller.Node == caller && r.Method == method {
			out = append(out, r)
		}
	}
	return out
}

// cudaRequest is a cuda.CUDAService request with params as a user writes them.
func cudaRequest(t testing.TB, kernelName string, params map[string]any) *cudapb.ComputeRequest {
	t.Helper()
	st, err := structpb.NewStruct(params)
	if err != nil {
		t.Fatal(err)
	}
	return &cudapb.ComputeRequest{Kernel: kernelName, Params: st}
}

// matrix is an n×n matrix of ones, as nested lists.
func matrix(n int) []any {
	m := make([]any, n)
	for i := range m {
		row := make([]any, n)
		for j := range row {
			row[j] = 1.0
		}
		m[i] = row
	}
	return m
}

// TestCUDADoor: cuda.CUDAService is another door into the same room. A
// call through it is identified, bounded, resolved, authorized by the same
// policy under the same quotas (shared with gpumesh.v1's calls of the same
// caller and rule), sets the connection's QoS class, holds against the
// host's budget, and is recorded once as "cuda.Compute" with its caller;
// its request is capped, before it is decoded, by the door's own limit.
func TestCUDADoor(t *testing.T) {
	cl := &classes{last: map[string]string{}}
	w := startWorldWith(t, doorPolicy, func(c *gpusvc.Config) {
		c.MaxCUDARequestBytes = doorCap
		c.WrapConn = cl.wrap
	}, "laptop", "narrow", "busy", "eager", "stranger")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	door := func(name string) cudapb.CUDAServiceClient { return cudapb.NewCUDAServiceClient(w.conn(t, name)) }
	twoByTwo := map[string]any{"a": []any{[]any{1, 2}, []any{3, 4}}, "b": []any{[]any{5, 6}, []any{7, 8}}}

	t.Run("product, recorded once with its caller", func(t *testing.T) {
		req := cudaRequest(t, "matrix_mul", twoByTwo)
		res, err := door("laptop").Compute(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(res.GetResult().AsSlice()); got != "[[19 22] [43 50]]" || fmt.Sprint(res.GetShape()) != "[2 2]" || res.GetDtype() != "float32" {
			t.Errorf("result %s, shape %v, dtype %q; want [[19 22] [43 50]], [2 2], float32", got, res.GetShape(), res.GetDtype())
		}
		recs := w.recordsOf("laptop", "cuda.Compute")
		if len(recs) != 1 {
			t.Fatalf("records of laptop's cuda.Compute: %+v; want one", recs)
		}
		r := recs[0]
		if r.Kernel != "matrix_mul" || r.GPU != "0" || !r.Allow || r.Rule != "laptop" || r.Class != "interactive" || r.Code != codes.OK ||
			r.BytesIn != int64(proto.Size(req)) || r.BytesOut != 16 {
			t.Errorf("record %+v; want matrix_mul on GPU 0, allowed by rule laptop, class interactive, OK, %d bytes in, 16 out", r, proto.Size(req))
		}
		if c := cl.of("laptop"); c != "interactive" {
			t.Errorf("laptop's connection has class %q; want interactive (the deciding rule's)", c)
		}
	})

	t.Run("the same policy decides", func(t *testing.T) {
		_, err := door("narrow").Compute(ctx, cudaRequest(t, "matrix_mul", twoByTwo))
		wantCode(t, err, codes.PermissionDenied, "denied by gpu-host's policy")
		res, err := door("narrow").Compute(ctx, cudaRequest(t, "relu", map[string]any{"x": []any{-1, 2}}))
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(res.GetValues()) != "[0 2]" {
			t.Errorf("relu = %v; want [0 2]", res.GetValues())
		}
		recs := w.recordsOf("narrow", "cuda.Compute")
		if len(recs) != 2 || recs[0].Allow || recs[0].Kernel != "matrix_mul" || recs[0].Code != codes.PermissionDenied || !recs[1].Allow {
			t.Errorf("narrow's records: %+v; want a denied matrix_mul and an allowed relu", recs)
		}
	})

	t.Run("a stranger is refused at admission", func(t *testing.T) {
		_, err := door("stranger").Compute(ctx, cudaRequest(t, "matrix_mul", twoByTwo))
		wantCode(t, err, codes.PermissionDenied, "denied by gpu-host's policy")
		eventually(t, "the stranger's refusal is recorded", func() bool {
			return len(w.recordsOf("stranger", "cuda.Compute")) == 1
		})
	})

	t.Run("rate shared with gpumesh.v1", func(t *testing.T) {
		// burst 2: one call through each door, then the bucket is empty
		// for 100s whichever door the next call takes.
		if _, err := w.clients["eager"].Compute(ctx, "relu", f32([]int64{2})); err != nil {
			t.Fatal(err)
		}
		if _, err := door("eager").Compute(ctx, cudaRequest(t, "relu", map[string]any{"x": []any{1}})); err != nil {
			t.Fatal(err)
		}
		_, err := door("eager").Compute(ctx, cudaRequest(t, "relu", map[string]any{"x": []any{1}}))
		wantCode(t, err, codes.ResourceExhausted, `rate = 0.01 calls/s, burst 2 (rule "eager")`)
	})

	t.Run("max_concurrent shared, memory held against the budget", func(t *testing.T) {
		entered, openGate := w.backend.close()
		open := sync.OnceFunc(openGate)
		defer open()
		big := cudaRequest(t, "relu", map[string]any{"x": matrix(40)})
		errs := make(chan error, 2)
		go func() { _, err := w.clients["busy"].Compute(ctx, "relu", f32([]int64{4})); errs <- err }()
		go func() { _, err := door("busy").Compute(ctx, big); errs <- err }()
		<-entered
		<-entered
		dev, err := w.clients["busy"].Devices(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if held, want := dev.GetLoad().GetMemoryHeldBytes(), int64(10*proto.Size(big)); held < want {
			t.Errorf("the host holds %d bytes for the calls in flight; want at least %d for the door's decoded request", held, want)
		}
		_, err = door("busy").Compute(ctx, cudaRequest(t, "relu", map[string]any{"x": []any{1}}))
		wantCode(t, err, codes.ResourceExhausted, "max_concurrent = 2")
		open()
		for range 2 {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("the door's own cap, before decoding", func(t *testing.T) {
		big := cudaRequest(t, "relu", map[string]any{"x": matrix(100)}) // 10,000 numbers, ~110 KB
		size := proto.Size(big)
		_, err := door("laptop").Compute(ctx, big)
		wantCode(t, err, codes.ResourceExhausted, fmt.Sprintf("request of %d bytes is over this host's %d-byte limit", size, doorCap))
		recs := w.recordsOf("laptop", "cuda.Compute")
		r := recs[len(recs)-1]
		if r.Code != codes.ResourceExhausted || r.BytesIn != int64(size) || r.Kernel != "" || r.Allow {
			t.Errorf("record %+v; want ResourceExhausted, %d bytes in, nothing decoded or decided", r, size)
		}
		// gpumesh.v1 takes the same numbers (raw, 40 KB) under its own cap.
		if _, err := w.clients["laptop"].Compute(ctx, "relu", f32([]int64{100, 100})); err != nil {
			t.Errorf("gpumesh.v1 relu of 100×100: %v", err)
		}
	})

	t.Run("authorized, then decoded", func(t *testing.T) {
		ragged := map[string]any{"a": []any{[]any{1, 2}, []any{3, 4}}, "b": []any{[]any{5, 6}, []any{7, 8, 9}}}
		_, err := door("laptop").Compute(ctx, cudaRequest(t, "matrix_mul", ragged))
		wantCode(t, err, codes.InvalidArgument, "params.b[1]: 3 entries, want 2")
		recs := w.recordsOf("laptop", "cuda.Compute")
		if r := recs[len(recs)-1]; !r.Allow || r.Kernel != "matrix_mul" || r.Code != codes.InvalidArgument {
			t.Errorf("record %+v; want an allowed matrix_mul that failed InvalidArgument", r)
		}
		// Narrow is refused the kernel before its params are looked at.
		_, err = door("narrow").Compute(ctx, cudaRequest(t, "matrix_mul", ragged))
		wantCode(t, err, codes.PermissionDenied, "denied by gpu-host's policy")
		_, err = door("laptop").Compute(ctx, cudaRequest(t, strings.Repeat("k", 200), twoByTwo))
		wantCode(t, err, codes.InvalidArgument, "kernel name of 200 bytes")
		recs = w.recordsOf("laptop", "cuda.Compute")
		if r := recs[len(recs)-1]; r.Allow || r.Rule != "" || len(r.Kernel) > 40 {
			t.Errorf("record %+v; want an undecided call with the name cut short", r)
		}
	})

	t.Run("no GPU the host lacks", func(t *testing.T) {
		req := cudaRequest(t, "relu", map[string]any{"x": []any{1}})
		req.Gpu = "7"
		_, err := door("laptop").Compute(ctx, req)
		wantCode(t, err, codes.InvalidArgument, `no gpu "7" on this host`)
		req.Gpu = "00"
		if _, err := door("laptop").Compute(ctx, req); err != nil {
			t.Errorf("gpu 00 (GPU 0): %v", err)
		}
	})
}
