package python_test

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
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
	var tried []string
	for _, p := range []string{"python3", "/usr/bin/python3"} {
		path, err := exec.LookPath(p)
		if err != nil {
			continue
		}
		out, err := exec.Command(path, "-c", "import grpc, google.protobuf").CombinedOutput()
		if err == nil {
			return path
		}
		tried = append(tried, path+": "+strings.TrimSpace(string(out)))
	}
	t.Skipf("no python3 with the grpc and protobuf modules (apt-get install python3-grpcio python3-protobuf); tried %q", tried)
	return ""
}

// gpuHost is an embedded tailnet with a GPU host serving the CPU backend
// to the node "cloud", recording who called what.
type gpuHost struct {
	tn *overlaytest.Tailnet

	mu      sync.Mutex
	callers map[string]int // "method caller" -> calls; guarded by mu
}

func startGPUHost(ctx context.Context, t *testing.T) *gpuHost {
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
	pol, err := policy.Parse("cloud.hcl", []byte(cloudPolicy))
	if err != nil {
		t.Fatal(err)
	}
	h := &gpuHost{tn: tn, callers: map[string]int{}}
	srv, err := gpusvc.NewServer(gpusvc.Config{
		Backend: cpu.New(),
		WhoIs:   host.WhoIs,
		Policy:  func() *policy.Policy { return pol },
		Host:    "gpu-host",
		OnCall: func(r gpusvc.CallRecord) {
			h.mu.Lock()
			h.callers[r.Method+" "+r.Caller.Node]++
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
		"\nOK\n",
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
	h := startGPUHost(ctx, t)
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
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build gpumesh with")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := filepath.Join(t.TempDir(), "gpumesh")
	if out, err := exec.CommandContext(ctx, goBin, "build", "-o", bin, "github.com/gpumesh/gpumesh/cmd/gpumesh").CombinedOutput(); err != nil {
		t.Fatalf("go build gpumesh: %v\n%s", err, out)
	}
	h := startGPUHost(ctx, t)

	up := exec.CommandContext(ctx, bin, "up", "--control-url", h.tn.ControlURL, "--state-dir", t.TempDir(),
		"--hostname", "cloud", "--ephemeral", "--forward", "127.0.0.1:0=gpu-host")
	// As overlaytest does in-process: a namespace with only loopback still
	// counts as a network that is up.
	up.Env = append(os.Environ(), "TS_ASSUME_NETWORK_UP_FOR_TEST=1")
	up.Stderr = os.Stderr
	stdout, err := up.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	rest := make(chan string, 1)
	lines := bufio.NewScanner(stdout)
	forwarding := regexp.MustCompile(`^gpumesh: forwarding (127\.0\.0\.1:\d+) -> gpu-host:50051$`)
	var addr string
	var output []string
	for lines.Scan() {
		output = append(output, lines.Text())
		if m := forwarding.FindStringSubmatch(lines.Text()); m != nil {
			addr = m[1]
		}
		if strings.Contains(lines.Text(), "ready") {
			break
		}
	}
	go func() {
		var more []string
		for lines.Scan() {
			more = append(more, lines.Text())
		}
		rest <- strings.Join(more, "\n")
		exited <- up.Wait()
	}()
	if addr == "" {
		up.Process.Kill()
		<-rest
		t.Fatalf("gpumesh up printed %q, no forwarding line (exit: %v)", output, <-exited)
	}

	runComputePy(ctx, t, py, addr)
	h.checkCallers(t)

	if err := up.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	more := <-rest
	if err := <-exited; err != nil {
		t.Errorf("gpumesh up after an interrupt: %v", err)
	}
	if !strings.Contains(more, "shutting down") {
		t.Errorf("gpumesh up ended without saying so: %q", more)
	}
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
