package python_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/gpumesh/gpumesh/gpusvc"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/internal/pythontest"
	"github.com/gpumesh/gpumesh/internal/testtools"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/overlay/forward"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/policy"
)

// hostPolicy: cloud may run every built-in within tight size limits (the
// client must adapt to them); narrow may only multiply; stranger nothing.
const hostPolicy = `
version = 1

rule "cloud" {
  subjects    = ["cloud"]
  gpus        = ["*"]
  kernels     = ["*"]
  max_request = "256KiB"
  max_memory  = "4MiB"
}

rule "narrow" {
  subjects = ["narrow"]
  gpus     = ["*"]
  kernels  = ["matrix_mul"]
}
`

// calls counts the host's finished calls by "method caller code".
type calls struct {
	mu sync.Mutex
	n  map[string]int // guarded by mu
}

func (c *calls) record(r gpusvc.CallRecord) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n[r.Method+" "+r.Caller.Node+" "+r.Code.String()]++
}

func (c *calls) count(method, caller string, code codes.Code) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[method+" "+caller+" "+code.String()]
}

// TestPackage installs the gpumesh package into a fresh virtual environment
// with pip, offline, and runs tests/test_client.py with it against a GPU
// host: as "cloud" through a `gpumesh up --forward` process, as "narrow"
// and "stranger" through forwarders of their own tailnet nodes.
func TestPackage(t *testing.T) {
	py := pythontest.Find(t, "grpc", "google.protobuf", "numpy")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	vpy := pythontest.Venv(ctx, t, py)
	bin := testtools.BuildGpumesh(ctx, t)

	tn, nodes := overlaytest.StartNodes(t, "gpu-host", "narrow", "stranger")
	path := filepath.Join(t.TempDir(), "policy.hcl")
	if err := os.WriteFile(path, []byte(hostPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	store, err := policy.NewStore(path, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	seen := &calls{n: map[string]int{}}
	host, err := node.StartHost(ctx, node.HostConfig{Overlay: nodes[0], Name: "gpu-host", Policy: store, OnCall: seen.record})
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()

	cloud := testtools.StartUp(ctx, t, bin, tn.ControlURL, "cloud", "gpu-host")
	env := []string{"GPUMESH_TARGET=" + cloud.Addr, "GPUMESH_KERNELS=" + strings.Join(kernel.Names(), ",")}
	for i, name := range []string{"narrow", "stranger"} {
		fwd, err := forward.Start(forward.Config{
			Dial:  nodes[i+1].Dial,
			Rules: []forward.Rule{{Listen: "127.0.0.1:0", Target: "gpu-host:" + strconv.Itoa(gpusvc.DefaultPort)}},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer fwd.Close()
		env = append(env, "GPUMESH_"+strings.ToUpper(name)+"="+fwd.Addr(0).String())
	}

	cmd := exec.CommandContext(ctx, vpy, "-m", "unittest", "-v", "test_client")
	cmd.Dir = "tests"
	cmd.Env = append(append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1"), env...)
	out, err := cmd.CombinedOutput()
	t.Logf("python -m unittest -v test_client:\n%s", out)
	if err != nil {
		t.Fatalf("the package's tests failed: %v", err)
	}
	ran := regexp.MustCompile(`(?m)^Ran (\d+) tests? in .*\n\nOK$`).FindSubmatch(out)
	if ran == nil {
		t.Fatalf("no \"Ran N tests ... OK\" in the output")
	}
	if n, _ := strconv.Atoi(string(ran[1])); n < 25 {
		t.Errorf("ran %d tests; want all 25 or more", n)
	}
	if strings.Contains(string(out), "skipped") {
		t.Errorf("a test skipped")
	}
	cloud.Stop(t)

	// What the host saw: the calls came from the callers' identities, the
	// request over max_request never arrived, and the host refused what
	// only it could know (memory held across sessions).
	for _, c := range []struct {
		method, caller string
		code           codes.Code
		min, max       int
	}{
		{"Compute", "cloud", codes.OK, 10, 1 << 30},
		{"Compute", "cloud", codes.ResourceExhausted, 0, 0},
		{"Write", "cloud", codes.ResourceExhausted, 2, 2}, // the 1 MiB chunk, and the second 3 MiB upload
		{"Compute", "narrow", codes.OK, 1, 1},
		{"Compute", "narrow", codes.PermissionDenied, 1, 1},
		{"Compute", "stranger", codes.PermissionDenied, 1, 1},
		{"OpenSession", "stranger", codes.PermissionDenied, 1, 1},
	} {
		if n := seen.count(c.method, c.caller, c.code); n < c.min || n > c.max {
			t.Errorf("the host recorded %d %s calls from %s ending %v; want %d to %d", n, c.method, c.caller, c.code, c.min, c.max)
		}
	}
}

// TestStubsFresh: the package's generated stubs, and the example's, come
// from the gpumesh.proto the Go server is built from.
func TestStubsFresh(t *testing.T) {
	py := pythontest.Find(t, "grpc", "google.protobuf", "numpy")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	root := testtools.Root(t)
	pythontest.CheckStubs(ctx, t, py, filepath.Join(root, "python", "gpumesh"), "gpumesh_pb2", pb.File_gpumesh_proto)
	pythontest.CheckStubs(ctx, t, py, filepath.Join(root, "examples", "python"), "gpumesh_pb2", pb.File_gpumesh_proto)
}
