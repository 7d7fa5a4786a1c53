package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/diag"
	"github.com/gpumesh/gpumesh/dscp"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/policy"
)

// TestServeFlags: serve's flags become the host's configuration field by
// field, the configuration validates, and each bad flag is refused naming
// itself, before anything starts.
func TestServeFlags(t *testing.T) {
	discard := slog.New(slog.DiscardHandler)
	parse := func(t *testing.T, args ...string) (node.HostConfig, error) {
		t.Helper()
		var f serveFlags
		cmd := newServeCmd()
		cmd.ResetFlags()
		f.register(cmd)
		if err := cmd.ParseFlags(args); err != nil {
			t.Fatalf("parse %v: %v", args, err)
		}
		return f.hostConfig(discard)
	}

	cfg, err := parse(t, "--policy", "p.hcl", "--hostname", "gpu-a", "--state-dir", "/var/lib/gpumesh", "--control-url", "http://hs:8080",
		"--max-request", "1MiB", "--max-memory", "8GiB", "--backend", "cuda", "--gpu-worker", "/opt/gpumesh-gpu", "--dscp", "EF", "--link-rate", "100Mbit/s",
		"--audit-log", "/var/log/gpumesh.log", "--audit-max-size", "1MiB", "--audit-keep", "0", "--metrics-listen", "tailnet:9090",
		"--port", "7000", "--join-timeout", "10s")
	if err != nil {
		t.Fatal(err)
	}
	tn := cfg.Join.Tailnet
	switch {
	case tn == nil || tn.Hostname != "gpu-a" || tn.Dir != "/var/lib/gpumesh" || tn.ControlURL != "http://hs:8080" || cfg.Join.Timeout != 10*time.Second:
		t.Errorf("join %+v", cfg.Join)
	case cfg.Name != "gpu-a" || cfg.Port != 7000 || cfg.Server.MaxRequestBytes != 1<<20 || cfg.Server.MaxMemory != 8<<30:
		t.Errorf("name %q port %d server %+v", cfg.Name, cfg.Port, cfg.Server)
	case cfg.Backend.Kind != node.BackendCUDA || cfg.Backend.Worker != "/opt/gpumesh-gpu":
		t.Errorf("backend %+v", cfg.Backend)
	case cfg.QoS == nil || cfg.QoS.DSCP != dscp.EF || cfg.QoS.NoOuterMarking || cfg.QoS.LinkRate != 100e6/8:
		t.Errorf("qos %+v", cfg.QoS)
	case cfg.Audit == nil || *cfg.Audit != (node.AuditConfig{Path: "/var/log/gpumesh.log", MaxBytes: 1 << 20, Keep: 0}):
		t.Errorf("audit %+v", cfg.Audit)
	case cfg.Metrics == nil || cfg.Metrics.Listen != "tailnet:9090":
		t.Errorf("metrics %+v", cfg.Metrics)
	case cfg.LocalAPI == nil || cfg.Logger != discard:
		t.Errorf("local API %+v, logger %v", cfg.LocalAPI, cfg.Logger)
	}
	cfg.Policy = nil
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "policy") {
		t.Errorf("Validate without the store serve adds = %v; want only that missing", err)
	}

	// Defaults: auto backend, AF41, audit and metrics off, the default
	// state dir; --dscp off turns outer marking off.
	cfg, err = parse(t, "--policy", "p.hcl", "--dscp", "off")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := diag.DefaultStateDir("gpu-host")
	if cfg.Backend.Kind != node.BackendAuto || !cfg.QoS.NoOuterMarking || cfg.Audit != nil || cfg.Metrics != nil || cfg.Join.Tailnet.Dir != want {
		t.Errorf("defaults: backend %q qos %+v audit %v metrics %v state dir %q (want %q)", cfg.Backend.Kind, cfg.QoS, cfg.Audit, cfg.Metrics, cfg.Join.Tailnet.Dir, want)
	}
	if cfg, _ = parse(t, "--policy", "p.hcl"); cfg.QoS.DSCP != dscp.AF41 || cfg.Server.MaxRequestBytes != 64<<20 {
		t.Errorf("default dscp %v, max request %d", cfg.QoS.DSCP, cfg.Server.MaxRequestBytes)
	}

	// --wg: a WireGuard mesh, and no local API (no tailnet to report on).
	cfg, err = parse(t, "--policy", "p.hcl", "--wg", "wg0.conf", "--wg-mode", "tun")
	if err != nil {
		t.Fatal(err)
	}
	if w := cfg.Join.WireGuard; w == nil || cfg.Join.Tailnet != nil || w.Path != "wg0.conf" || w.Mode.String() != "tun" || cfg.LocalAPI != nil || cfg.Name != "gpu-host" {
		t.Errorf("--wg: join %+v, local API %v, name %q", cfg.Join, cfg.LocalAPI, cfg.Name)
	}

	for _, tt := range []struct {
		args []string
		err  string
	}{
		{nil, "--policy is required"},
		{[]string{"--max-request", "lots"}, "--max-request"},
		{[]string{"--max-memory", "0"}, "--max-memory"},
		{[]string{"--dscp", "EF2"}, `--dscp: `},
		{[]string{"--shape-rate", "fast"}, "--shape-rate"},
		{[]string{"--audit-log", "a.log", "--audit-max-size", "0"}, "--audit-max-size"},
		{[]string{"--audit-log", "a.log", "--audit-keep", "-1"}, "--audit-keep"},
		{[]string{"--wg", "wg0.conf", "--wg-mode", "kernel"}, "unknown mode"},
	} {
		args := tt.args
		if tt.err != "--policy is required" {
			args = append([]string{"--policy", "p.hcl"}, args...)
		}
		if _, err := parse(t, args...); err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("serve %v: %v; want an error with %q", args, err, tt.err)
		}
	}
	// Values only the configuration can judge are refused by Validate.
	pol := filepath.Join(t.TempDir(), "p.hcl")
	os.WriteFile(pol, []byte("version = 1\n"), 0o600)
	store, err := policy.NewStore(pol, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ flag, value, err string }{
		{"--backend", "rocm", `backend "rocm"`},
		{"--metrics-listen", "0.0.0.0:9090", "not a loopback address"},
		{"--port", "70000", "port 70000"},
	} {
		cfg, err := parse(t, "--policy", pol, tt.flag, tt.value)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Policy = store
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%s %s: Validate = %v; want an error with %q", tt.flag, tt.value, err, tt.err)
		}
	}
}

// running is a `gpumesh serve` or `gpumesh up` running in this process.
type running struct {
	out  *syncBuffer
	stop func() // interrupts it and waits; fails the test if it failed
	api  diag.LocalClient
}

// startServe runs `gpumesh serve ARGS...` and waits until its local API at
// stateDir answers.
func startServe(t *testing.T, ctx context.Context, stateDir string, args ...string) *running {
	t.Helper()
	return startNode(t, ctx, stateDir, append([]string{"serve"}, args...)...)
}

// startNode runs `gpumesh ARGS...` (serve or up) and waits until its local
// API at stateDir answers.
func startNode(t *testing.T, ctx context.Context, stateDir string, args ...string) *running {
	t.Helper()
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	s := &running{out: new(syncBuffer), api: diag.LocalClient{Path: diag.SocketPath(stateDir)}}
	go func() {
		root := newRootCmd()
		root.SetOut(s.out)
		root.SetErr(s.out)
		root.SetArgs(args)
		done <- root.ExecuteContext(sctx)
	}()
	var once bool
	s.stop = func() {
		if once {
			return
		}
		once = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: %v\n%s", args[0], err, s.out.String())
		}
	}
	t.Cleanup(s.stop)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		_, err := s.api.QoS(ctx)
		if !errors.Is(err, diag.ErrNotRunning) {
			return s
		}
		select {
		case err := <-done:
			once = true
			t.Fatalf("%s ended: %v\n%s", args[0], err, s.out.String())
		case <-ctx.Done():
			t.Fatalf("%s's local API never answered\nit said: %s", args[0], s.out.String())
		case <-tick.C:
		}
	}
}
