package python_test

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	"github.com/gpumesh/gpumesh/internal/pythontest"
	"github.com/gpumesh/gpumesh/internal/testtools"
	"github.com/gpumesh/gpumesh/overlay/forward"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/policy"
)

const cloudPolicy = `
version = 1

rule "cloud" {
  subjects = ["cloud"]
  gpus     = ["*"]
  kernels  = ["*"]
}
`

// python finds a Python 3 that can import grpc and protobuf: the one on
// PATH, or Debian's when PATH leads to another installation.
func python(t *testing.T) string {
	t.Helper()
	return pythontest.Find(t, "grpc", "google.protobuf")
}

// leastPrivilegePolicy lets cloud multiply matrices, and nothing else.
const leastPrivilegePolicy = `
version = 1

rule "cloud" {
  subjects = ["cloud"]
  gpus     = ["*"]
  kernels  = ["matrix_mul"]
}
`

// gpuHost is an embedded tailnet with a GPU host serving the CPU backend
// under a policy, recording who called what.
type gpuHost struct {
	tn *overlaytest.Tailnet

	mu      sync.Mutex
	callers map[string]int // "method caller" -> calls; guarded by mu
	kernels map[string]int // "kernel caller" -> Compute calls; guarded by mu
}

func startGPUHost(ctx context.Context, t *testing.T, policySrc string) *gpuHost {
	t.Helper()
	tn, err := overlaytest.Start(overlaytest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tn.Close() })
	host, err := tn.Join(ctx, "gpu-host")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.Close() })
	pol, err := policy.Parse("cloud.hcl", []byte(policySrc))
	if err != nil {
		t.Fatal(err)
	}
	h := &gpuHost{tn: tn, callers: map[string]int{}, kernels: map[string]int{}}
	srv, err := gpusvc.NewServer(gpusvc.Config{
		Backend: cpu.New(),
		WhoIs:   host.WhoIs,
		Policy:  func() *policy.Policy { return pol },
		Host:    "gpu-host",
		OnCall: func(r gpusvc.CallRecord) {
			h.mu.Lock()
			h.callers[r.Method+" "+r.Caller.Node]++
			if r.Method == "Compute" {
				h.kernels[r.Kernel+" "+r.Caller.Node]++
			}
			h.mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := host.Listen("tcp", ":"+strconv.Itoa(gpusvc.DefaultPort))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln)
	}()
	t.Cleanup(func() { srv.Stop(); <-served })
	return h
}

// checkCallers says whether every call the host saw came from cloud, and
// at least two Compute calls did.
func (h *gpuHost) checkCallers(t *testing.T) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.callers["Compute cloud"] < 2 {
		t.Errorf("the host recorded calls %v; want at least 2 Compute calls from cloud", h.callers)
	}
	for k := range h.callers {
		if !strings.HasSuffix(k, " cloud") {
			t.Errorf("the host saw a call %q not from the cloud node", k)
		}
	}
}

// runComputePy runs compute.py against target and checks its report.
func runComputePy(ctx context.Context, t *testing.T, py, target string) {
	t.Helper()
	script, err := filepath.Abs("compute.py")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, py, script, "--target", target, "--size", "16")
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.CombinedOutput()
	t.Logf("compute.py:\n%s", out)
	if err != nil {
		t.Fatalf("compute.py: %v", err)
	}
	for _, want := range []string{
		"host gpu-host, backend cpu",
		"the host sees me as cloud",
		"matrix_mul 2x3 @ 3x2 = [58.0, 64.0, 139.0, 154.0] ok",
		"matrix_mul 16x16 ok",
		"buffers: uploaded and read back 4096 bytes",
		"buffers: relu on the resident buffer ok",
		"\nOK: 4 checks passed, 0 refused by the host's policy, 0 failed\n",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("compute.py output lacks %q", want)
		}
	}
}

// TestComputePy runs compute.py, as a cloud engineer would, against
// localhost: a gpumesh forwarder carries it over an embedded tailnet to a
// GPU host, which sees the cloud node's identity.
func TestComputePy(t *testing.T) {
	py := python(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	h := startGPUHost(ctx, t, cloudPolicy)
	cloud, err := h.tn.Join(ctx, "cloud")
	if err != nil {
		t.Fatal(err)
	}
	defer cloud.Close()
	fwd, err := forward.Start(forward.Config{
		Dial:  cloud.Dial,
		Rules: []forward.Rule{{Listen: "127.0.0.1:0", Target: "gpu-host:50051"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer fwd.Close()
	runComputePy(ctx, t, py, fwd.Addr(0).String())
	h.checkCallers(t)
}

// TestComputePyThroughGpumeshUp is the same through the gpumesh binary:
// `gpumesh up --forward` in its own process joins the embedded tailnet.
func TestComputePyThroughGpumeshUp(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the gpumesh binary")
	}
	py := python(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := testtools.BuildGpumesh(ctx, t)
	h := startGPUHost(ctx, t, cloudPolicy)
	up := testtools.StartUp(ctx, t, bin, h.tn.ControlURL, "cloud", "gpu-host")
	runComputePy(ctx, t, py, up.Addr)
	h.checkCallers(t)
	up.Stop(t)
}

// TestComputePyHostUnreachable: when the forwarder cannot reach the host,
// the script fails with UNAVAILABLE and says what to check.
func TestComputePyHostUnreachable(t *testing.T) {
	py := python(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	fwd, err := forward.Start(forward.Config{
		Dial: func(context.Context, string, string) (net.Conn, error) {
			return nil, errors.New("gpu-host is not on the tailnet")
		},
		Rules: []forward.Rule{{Listen: "127.0.0.1:0", Target: "gpu-host:50051"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer fwd.Close()
	script, err := filepath.Abs("compute.py")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, py, script, "--target", fwd.Addr(0).String(), "--timeout", "20")
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("compute.py with the host unreachable: %v; want exit status 1\n%s", err, out)
	}
	for _, want := range []string{"gpumesh call failed: UNAVAILABLE", "is `gpumesh up --forward"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("compute.py output lacks %q:\n%s", want, out)
		}
	}
}

// TestComputePyLeastPrivilege runs compute.py as a node whose policy allows
// matrix_mul only: it checks what it may do, reports what the policy
// refuses with the policy's reason (asking Explain first, so no refused
// call reaches the host), and passes. A node the policy allows nothing
// learns why, and the script fails: nothing was checked.
func TestComputePyLeastPrivilege(t *testing.T) {
	py := python(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	h := startGPUHost(ctx, t, leastPrivilegePolicy)
	script, err := filepath.Abs("compute.py")
	if err != nil {
		t.Fatal(err)
	}
	run := func(name string) (string, error) {
		n, err := h.tn.Join(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		defer n.Close()
		fwd, err := forward.Start(forward.Config{
			Dial:  n.Dial,
			Rules: []forward.Rule{{Listen: "127.0.0.1:0", Target: "gpu-host:50051"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer fwd.Close()
		cmd := exec.CommandContext(ctx, py, script, "--target", fwd.Addr(0).String(), "--size", "8")
		cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
		out, err := cmd.CombinedOutput()
		t.Logf("compute.py as %s:\n%s", name, out)
		return string(out), err
	}

	out, err := run("cloud")
	if err != nil {
		t.Fatalf("compute.py under a policy that allows matrix_mul: %v; want exit status 0", err)
	}
	for _, want := range []string{
		"matrix_mul 2x3 @ 3x2 = [58.0, 64.0, 139.0, 154.0] ok",
		"matrix_mul 8x8 ok",
		"buffers: uploaded and read back 4096 bytes",
		"buffers: relu on the resident buffer: refused by the host's policy: no rule allows cloud to call relu on gpu 0 (default deny)",
		"\nOK: 3 checks passed, 1 refused by the host's policy, 0 failed\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("compute.py output lacks %q", want)
		}
	}

	out, err = run("stranger")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("compute.py as a node the policy allows nothing: %v; want exit status 1", err)
	}
	for _, want := range []string{
		"host: refused by the host's policy: gpumesh: denied by gpu-host's policy: no rule names stranger (default deny)",
		"NOTHING CHECKED: the host's policy allows this node nothing",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("compute.py output lacks %q", want)
		}
	}

	h.mu.Lock()
	defer h.mu.Unlock()
	if n := h.kernels["relu cloud"] + h.kernels["matrix_mul stranger"]; n != 0 {
		t.Errorf("the host saw %d calls the policy refuses; Explain should have kept them home (%v)", n, h.kernels)
	}
	if h.kernels["matrix_mul cloud"] != 2 {
		t.Errorf("the host saw %v; want 2 matrix_mul calls from cloud", h.kernels)
	}
}
