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

// TestComputePy runs compute.py, as a cloud engineer would, against
// localhost: a gpumesh forwarder carries it over an embedded tailnet to a
// GPU host, which sees the cloud node's identity.
func TestComputePy(t *testing.T) {
	py := python(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tn, err := overlaytest.Start(overlaytest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tn.Close()
	host, err := tn.Join(ctx, "gpu-host")
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	cloud, err := tn.Join(ctx, "cloud")
	if err != nil {
		t.Fatal(err)
	}
	defer cloud.Close()

	pol, err := policy.Parse("cloud.hcl", []byte(cloudPolicy))
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu      sync.Mutex
		callers = map[string]int{} // "method caller" -> calls; guarded by mu
	)
	srv, err := gpusvc.NewServer(gpusvc.Config{
		Backend: cpu.New(),
		WhoIs:   host.WhoIs,
		Policy:  func() *policy.Policy { return pol },
		Host:    "gpu-host",
		OnCall: func(r gpusvc.CallRecord) {
			mu.Lock()
			callers[r.Method+" "+r.Caller.Node]++
			mu.Unlock()
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
	defer func() { srv.Stop(); <-served }()

	fwd, err := forward.Start(forward.Config{
		Dial:  cloud.Dial,
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
	cmd := exec.CommandContext(ctx, py, script, "--target", fwd.Addr(0).String(), "--size", "16")
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
		"buffers: ",
		"\nOK\n",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("compute.py output lacks %q", want)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if callers["Compute cloud"] < 2 {
		t.Errorf("the host recorded calls %v; want at least 2 Compute calls from cloud", callers)
	}
	for k := range callers {
		if !strings.HasSuffix(k, " cloud") {
			t.Errorf("the host saw a call %q not from the cloud node", k)
		}
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
