package cuda_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cudapb"
	"github.com/gpumesh/gpumesh/internal/pythontest"
	"github.com/gpumesh/gpumesh/internal/testtools"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/policy"
)

// product is what snippet.py prints for its two matrices.
const product = "[[19.0, 22.0], [43.0, 50.0]]"

// runSnippet runs snippet.py, as the user copied it, with its target
// 'localhost:50051' changed to target, and returns what it printed.
func runSnippet(ctx context.Context, t *testing.T, py, target string) (string, error) {
	t.Helper()
	src, err := os.ReadFile("snippet.py")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(src), "'localhost:50051'") {
		t.Fatal("snippet.py no longer targets 'localhost:50051'")
	}
	dir := t.TempDir()
	script := filepath.Join(dir, "snippet.py")
	if err := os.WriteFile(script, []byte(strings.Replace(string(src), "'localhost:50051'", "'"+target+"'", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	here, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, py, script)
	// The stubs are beside the snippet, as the user keeps them.
	cmd.Env = append(os.Environ(), "PYTHONPATH="+here, "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.CombinedOutput()
	t.Logf("snippet.py:\n%s", out)
	return string(out), err
}

// TestStubsFresh: cuda_pb2.py comes from the cuda.proto the Go stubs do.
func TestStubsFresh(t *testing.T) {
	py := pythontest.Find(t, "grpc", "google.protobuf")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	here, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	pythontest.CheckStubs(ctx, t, py, here, "cuda_pb2", cudapb.File_cuda_proto)
}

// through is a GPU host on an embedded tailnet, serving a least-privilege
// policy (cloud may run matrix_mul, nothing else), and `gpumesh up
// --forward` on node cloud, in its own process, forwarding a loopback port
// to it: what a user runs.
type through struct {
	host *node.Host
	up   *testtools.Up

	mu    sync.Mutex
	calls []gpusvc.CallRecord // what the host recorded; guarded by mu
}

func startThrough(ctx context.Context, t *testing.T) *through {
	t.Helper()
	bin := testtools.BuildGpumesh(ctx, t)
	tn, nodes := overlaytest.StartNodes(t, "gpu-host")
	path := filepath.Join(t.TempDir(), "policy.hcl")
	if err := os.WriteFile(path, []byte(`
version = 1
rule "cloud" {
  subjects = ["cloud"]
  gpus     = ["*"]
  kernels  = ["matrix_mul"]
}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	store, err := policy.NewStore(path, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	th := &through{}
	th.host, err = node.StartHost(ctx, node.HostConfig{Overlay: nodes[0], Name: "gpu-host", Policy: store,
		OnCall: func(r gpusvc.CallRecord) {
			th.mu.Lock()
			th.calls = append(th.calls, r)
			th.mu.Unlock()
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { th.host.Close() })
	th.up = testtools.StartUp(ctx, t, bin, tn.ControlURL, "cloud", "gpu-host")
	return th
}

// recorded returns the calls the host recorded for method.
func (th *through) recorded(method string) []gpusvc.CallRecord {
	th.mu.Lock()
	defer th.mu.Unlock()
	var out []gpusvc.CallRecord
	for _, r := range th.calls {
		if r.Method == method {
			out = append(out, r)
		}
	}
	return out
}

// TestSnippetThroughGpumeshUp is the test: the snippet, with only
// params= filled in, through `gpumesh up --forward` to a GPU host on an
// embedded tailnet, behind the host's identity, policy and audit.
func TestSnippetThroughGpumeshUp(t *testing.T) {
	py := pythontest.Find(t, "grpc", "google.protobuf")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	th := startThrough(ctx, t)

	out, err := runSnippet(ctx, t, py, th.up.Addr)
	if err != nil {
		t.Fatalf("snippet.py: %v", err)
	}
	if strings.TrimSpace(out) != product {
		t.Errorf("snippet.py printed %q; want %q", strings.TrimSpace(out), product)
	}
	th.up.Stop(t)

	calls := th.recorded("cuda.Compute")
	if len(calls) != 1 || calls[0].Kernel != "matrix_mul" || calls[0].Caller.Node != "cloud" || !calls[0].Allow ||
		calls[0].Rule != "cloud" || calls[0].Code != codes.OK {
		t.Errorf("the host recorded %+v; want one allowed cuda.Compute of matrix_mul from cloud", calls)
	}
}

// TestGrpcurlThroughGpumeshUp: gRPC's own tools work through the
// forwarder: grpcurl (make grpcurl) lists and describes the services by
// reflection, calls cuda.CUDAService with params as plain JSON and asks
// the health service; a Go health client watches the host, which says
// NOT_SERVING when it stops. The policy names cloud for matrix_mul alone:
// reflection and health need no right of their own.
func TestGrpcurlThroughGpumeshUp(t *testing.T) {
	grpcurl := testtools.Grpcurl(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	th := startThrough(ctx, t)
	addr := th.up.Addr
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.CommandContext(ctx, grpcurl, append([]string{"-plaintext"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("grpcurl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	out := run(addr, "list")
	for _, svc := range []string{"gpumesh.v1.GPU", "cuda.CUDAService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} {
		if !strings.Contains(out, svc+"\n") {
			t.Errorf("grpcurl list:\n%s\nlacks %s", out, svc)
		}
	}
	if out := run(addr, "describe", "cuda.ComputeRequest"); !strings.Contains(out, ".google.protobuf.Struct params = 2;") {
		t.Errorf("grpcurl describe cuda.ComputeRequest:\n%s", out)
	}
	if out := run(addr, "describe", "gpumesh.v1.GPU"); !strings.Contains(out, "rpc Compute ( .gpumesh.v1.ComputeRequest ) returns ( .gpumesh.v1.ComputeResponse );") {
		t.Errorf("grpcurl describe gpumesh.v1.GPU:\n%s", out)
	}

	out = run("-d", `{"kernel": "matrix_mul", "params": {"a": [[1, 2], [3, 4]], "b": [[5, 6], [7, 8]]}}`, addr, "cuda.CUDAService/Compute")
	var res struct {
		Result [][]float64 `json:"result"`
		Shape  []string    `json:"shape"`
		Dtype  string      `json:"dtype"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("grpcurl's answer %q: %v", out, err)
	}
	if len(res.Result) != 2 || res.Result[0][0] != 19 || res.Result[1][1] != 50 || res.Dtype != "float32" ||
		strings.Join(res.Shape, ",") != "2,2" {
		t.Errorf("grpcurl's answer: %s", out)
	}
	// relu is not cloud's: the policy's refusal, as grpcurl shows it.
	cmd := exec.CommandContext(ctx, grpcurl, "-plaintext", "-d", `{"kernel": "relu", "params": {"x": [-1, 1]}}`, addr, "cuda.CUDAService/Compute")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "PermissionDenied") || !strings.Contains(string(out), "denied by gpu-host's policy") {
		t.Errorf("grpcurl relu: %v\n%s\nwant PermissionDenied with the policy's reason", err, out)
	}

	for _, svc := range []string{"", "cuda.CUDAService"} {
		out := run("-d", `{"service": "`+svc+`"}`, addr, "grpc.health.v1.Health/Check")
		if !strings.Contains(out, `"status": "SERVING"`) {
			t.Errorf("grpcurl health check of %q:\n%s", svc, out)
		}
	}

	// A Go health client, as gRPC clients' health checking uses it.
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	watch, err := healthpb.NewHealthClient(cc).Watch(ctx, &healthpb.HealthCheckRequest{Service: "gpumesh.v1.GPU"})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := watch.Recv(); err != nil || st.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Watch: %v, %v; want SERVING", st.GetStatus(), err)
	}
	closed := make(chan error, 1)
	go func() { closed <- th.host.Close() }()
	if st, err := watch.Recv(); err != nil || st.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("Watch while the host stops: %v, %v; want NOT_SERVING", st.GetStatus(), err)
	}
	if err := <-closed; err != nil {
		t.Errorf("host.Close: %v", err)
	}

	if calls := th.recorded("cuda.Compute"); len(calls) != 2 || !calls[0].Allow || calls[1].Allow || calls[0].Caller.Node != "cloud" {
		t.Errorf("cuda.Compute records %+v; want cloud's allowed matrix_mul and denied relu", calls)
	}
	if calls := th.recorded("reflection"); len(calls) < 3 || calls[0].Caller.Node != "cloud" || !calls[0].Allow {
		t.Errorf("reflection records %+v; want one per grpcurl run, admitted, from cloud", calls)
	}
}
