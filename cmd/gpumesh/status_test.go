package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/diag"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
)

// TestStatusAndDoctorCommands: `gpumesh serve` runs as gpu-host; `gpumesh
// status` for gpu-host asks it through its local API (its state directory
// is in use); `gpumesh doctor` for a laptop the policy does not know joins
// as the laptop and fails on the policy check, with exit status 1.
func TestStatusAndDoctorCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("joins an embedded tailnet")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	tn, err := overlaytest.Start(overlaytest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tn.Close()
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.hcl")
	os.WriteFile(pol, []byte("version = 1\nrule \"cloud\" {\n  subjects = [\"cloud\"]\n  kernels = [\"*\"]\n  gpus = [\"*\"]\n}\n"), 0o600)
	hostState := filepath.Join(dir, "gpu-host")
	common := []string{"--control-url", tn.ControlURL, "--ephemeral", "--dscp", "off"}
	srv := startServe(t, ctx, hostState, append([]string{"--policy", pol, "--hostname", "gpu-host", "--state-dir", hostState, "--backend", "cpu"}, common...)...)
	defer srv.stop()

	out, err := runKeysCmd(t, "", "status", "--json", "--hostname", "gpu-host", "--state-dir", hostState, "--control-url", tn.ControlURL)
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	var rep diag.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.Self.Name != "gpu-host" || rep.Self.State != "Running" {
		t.Fatalf("status through the local API = %+v, %v\n%s", rep, err, out)
	}

	out, err = runKeysCmd(t, "", append([]string{"doctor", "--host", "gpu-host", "--timeout", "5s",
		"--hostname", "laptop", "--state-dir", filepath.Join(dir, "laptop")}, common[:3]...)...)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 1 {
		t.Fatalf("doctor = %v; want exit status 1\n%s", err, out)
	}
	for _, want := range []string{"ok    tailnet", "ok    service gpu-host", "fail  policy gpu-host", `no rule names laptop`} {
		if !strings.Contains(out, want) {
			t.Errorf("doctor output lacks %q:\n%s", want, out)
		}
	}

	// With the control server gone, a node that cannot join says so.
	srv.stop()
	tn.Close()
	out, err = runKeysCmd(t, "", "doctor", "--json", "--hostname", "nobody", "--state-dir", filepath.Join(dir, "nobody"),
		"--control-url", tn.ControlURL, "--join-timeout", "2s", "--timeout", "1s")
	var cs []diag.Check
	if jerr := json.Unmarshal([]byte(out), &cs); jerr != nil || len(cs) != 2 || cs[0].Result != diag.Fail || cs[1].Result != diag.Fail || !errors.As(err, &ee) {
		t.Fatalf("doctor without control = %v, %+v (%v)\n%s", err, cs, jerr, out)
	}
}

// TestStatusFindsNode: status, doctor and qos status given no flags find
// the node running here by themselves, with default paths under a temp
// HOME and XDG_RUNTIME_DIR. None running: they say where they looked and
// never join anything (a control server that counts requests hears none).
// serve running: status lists the GPU host itself. serve and up running:
// they ask which, by --state-dir, and --hostname picks one.
func TestStatusFindsNode(t *testing.T) {
	if testing.Short() {
		t.Skip("joins an embedded tailnet")
	}
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("XDG_CONFIG_HOME", "")
	t.Setenv("XDG_RUNTIME_DIR", filepath.Join(home, "run"))
	var asked atomic.Int64
	control := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		asked.Add(1)
		http.Error(w, "no", http.StatusTeapot)
	}))
	defer control.Close()
	t.Setenv("TS_CONTROL_URL", control.URL)

	for _, args := range [][]string{{"status"}, {"doctor"}, {"status", "--json"}} {
		out, err := runKeysCmd(t, "", args...)
		if err == nil || !strings.HasPrefix(err.Error(), "no running gpumesh node (looked in ") ||
			!strings.Contains(err.Error(), filepath.Join(home, "run", "gpumesh", "*.sock")) ||
			!strings.Contains(err.Error(), filepath.Join(home, ".config", "gpumesh", "*", "gpumesh.sock")) {
			t.Errorf("%v with nothing running = %v\n%s", args, err, out)
		}
	}
	if out, err := runKeysCmd(t, "", "qos", "status", "--probe=false"); err != nil || !strings.Contains(out, "no running node found (no running gpumesh node (looked in ") {
		t.Errorf("qos status with nothing running = %v\n%s", err, out)
	}
	if n := asked.Load(); n != 0 {
		t.Errorf("the control server was asked %d times: a command given no node joined one", n)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tn := overlaytest.New(t, overlaytest.Options{})
	pol := filepath.Join(home, "policy.hcl")
	os.WriteFile(pol, []byte("version = 1\nrule \"cloud\" {\n  subjects = [\"cloud\"]\n  kernels = [\"*\"]\n  gpus = [\"*\"]\n}\n"), 0o600)
	hostState := filepath.Join(home, ".config", "gpumesh", "gpu-host")
	startServe(t, ctx, hostState, "--policy", pol, "--control-url", tn.ControlURL, "--ephemeral", "--dscp", "off", "--backend", "cpu")

	out, err := runKeysCmd(t, "", "status", "--json", "--timeout", "2s")
	var rep diag.Report
	if err != nil || json.Unmarshal([]byte(out), &rep) != nil || rep.Self.Name != "gpu-host" || rep.Self.GPU == nil || rep.Self.GPU.Backend != "cpu" {
		t.Fatalf("status on the GPU host = %v, %+v\n%s", err, rep.Self, out)
	}
	if out, err := runKeysCmd(t, "", "status", "--timeout", "2s"); err != nil || !strings.Contains(out, "GPU hosts:\n  gpu-host ") || !strings.Contains(out, "this node  cpu backend, 1 device") {
		t.Errorf("status on the GPU host does not list it: %v\n%s", err, out)
	}
	if out, err := runKeysCmd(t, "", "qos", "status", "--json"); err != nil || !strings.Contains(out, `"classes"`) {
		t.Errorf("qos status on the GPU host: %v\n%s", err, out)
	}

	cloudState := filepath.Join(home, ".config", "gpumesh", "cloud")
	startNode(t, ctx, cloudState, "up", "--hostname", "cloud", "--control-url", tn.ControlURL, "--ephemeral")
	out, err = runKeysCmd(t, "", "status")
	var several *diag.SeveralError
	if !errors.As(err, &several) || !strings.Contains(err.Error(), "cloud (state dir "+cloudState+")") ||
		!strings.Contains(err.Error(), "gpu-host (state dir "+hostState+")") || !strings.Contains(err.Error(), "--state-dir") {
		t.Errorf("status with two nodes running = %v; want both named and --state-dir asked for\n%s", err, out)
	}
	out, err = runKeysCmd(t, "", "status", "--json", "--hostname", "cloud", "--timeout", "2s")
	rep = diag.Report{}
	if err != nil || json.Unmarshal([]byte(out), &rep) != nil || rep.Self.Name != "cloud" || rep.Self.GPU != nil {
		t.Errorf("status --hostname cloud = %v, %+v\n%s", err, rep.Self, out)
	}
	if n := asked.Load(); n != 0 {
		t.Errorf("the control server in TS_CONTROL_URL was asked %d times", n)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
