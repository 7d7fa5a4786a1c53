package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
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
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	tn, err := overlaytest.Start(overlaytest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tn.Close()
	tn.Control.AllOnline = true
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.hcl")
	os.WriteFile(pol, []byte("version = 1\nrule \"cloud\" {\n  subjects = [\"cloud\"]\n  kernels = [\"*\"]\n  gpus = [\"*\"]\n}\n"), 0o600)
	hostState := filepath.Join(dir, "gpu-host")
	common := []string{"--control-url", tn.ControlURL, "--ephemeral", "--dscp", "off"}

	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	var serveOut syncBuffer
	go func() {
		root := newRootCmd()
		root.SetOut(&serveOut)
		root.SetErr(&serveOut)
		root.SetArgs(append([]string{"serve", "--policy", pol, "--hostname", "gpu-host", "--state-dir", hostState}, common...))
		served <- root.ExecuteContext(sctx)
	}()
	defer func() {
		stop()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	// Wait for serve's local API to answer.
	c := diag.LocalClient{Path: diag.SocketPath(hostState)}
	for {
		_, err := c.Status(ctx, diag.Options{Timeout: time.Second})
		if err == nil {
			break
		}
		select {
		case err := <-served:
			t.Fatalf("serve ended: %v\n%s", err, serveOut.String())
		case <-ctx.Done():
			t.Fatalf("serve's local API never answered: %v\nserve said: %s", err, serveOut.String())
		case <-time.After(50 * time.Millisecond):
		}
	}

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
	tn.Close()
	out, err = runKeysCmd(t, "", "doctor", "--json", "--hostname", "nobody", "--state-dir", filepath.Join(dir, "nobody"),
		"--control-url", tn.ControlURL, "--join-timeout", "2s", "--timeout", "1s")
	var cs []diag.Check
	if jerr := json.Unmarshal([]byte(out), &cs); jerr != nil || len(cs) != 2 || cs[0].Result != diag.Fail || cs[1].Result != diag.Fail || !errors.As(err, &ee) {
		t.Fatalf("doctor without control = %v, %+v (%v)\n%s", err, cs, jerr, out)
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
