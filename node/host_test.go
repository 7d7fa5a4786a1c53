package node

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/gpumesh/gpumesh/diag"
	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/audit"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/policy"
)

const partsPolicy = `
version = 1
rule "laptop" {
  subjects = ["laptop"]
  kernels  = ["relu"]
  gpus     = ["*"]
}
rule "scrape" {
  subjects = ["laptop"]
  kernels  = ["observe:metrics"]
  gpus     = ["*"]
}
`

// TestHostParts: a host that joins the tailnet itself, with every part:
// QoS, audit log, metrics on the tailnet, local API, and observers of its
// own. Each call reaches the audit log, the metrics and the caller's
// observer alike; the metrics still read the server after the caller's
// OnServer ran. Close stops the parts in the reverse order of start, each
// once, the overlay last; a second Close is net.ErrClosed. A start that
// fails half way stops what had started, in the same order.
func TestHostParts(t *testing.T) {
	if testing.Short() {
		t.Skip("joins an embedded tailnet")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tn, nodes := overlaytest.StartNodes(t, "laptop")
	laptop := nodes[0]
	dir := t.TempDir()
	polPath := filepath.Join(dir, "policy.hcl")
	if err := os.WriteFile(polPath, []byte(partsPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	store, err := policy.NewStore(polPath, t.Logf)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("half-built start undone", func(t *testing.T) {
		busy, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer busy.Close()
		nc := tn.NodeConfig("half-host")
		var stopped []string
		_, err = startHost(ctx, HostConfig{
			Join: &JoinConfig{Tailnet: &nc}, Policy: store, QoS: &QoSConfig{},
			Audit:   &AuditConfig{Path: filepath.Join(dir, "half.log")},
			Metrics: &MetricsConfig{Listen: busy.Addr().String()}, // taken: the start fails there
		}, func(name string) { stopped = append(stopped, name) })
		if err == nil || !strings.Contains(err.Error(), "metrics at") {
			t.Fatalf("start with the metrics port taken = %v", err)
		}
		want := []string{"policy watch", "compute endpoint", "qos", "audit log", "backend", "overlay"}
		if !slices.Equal(stopped, want) {
			t.Errorf("a failed start stopped %v; want %v", stopped, want)
		}
	})

	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	var (
		mu      sync.Mutex
		seen    int // calls the caller's observer saw; guarded by mu
		servers int // OnServer calls; guarded by mu
		stopped []string
	)
	nc := tn.NodeConfig("gpu-host")
	cfg := HostConfig{
		Join: &JoinConfig{Tailnet: &nc}, Policy: store, QoS: &QoSConfig{},
		Audit:    &AuditConfig{Path: filepath.Join(dir, "audit.log")},
		Metrics:  &MetricsConfig{Listen: "tailnet:9090"},
		LocalAPI: &LocalAPIConfig{StateDir: state, RuntimeDir: filepath.Join(dir, "run")},
		OnCall: func(gpusvc.CallRecord) {
			mu.Lock()
			seen++
			mu.Unlock()
		},
		OnServer: func(*gpusvc.Server) {
			mu.Lock()
			servers++
			mu.Unlock()
		},
	}
	h, err := startHost(ctx, cfg, func(name string) { stopped = append(stopped, name) })
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if h.Name() != "gpu-host" {
		t.Errorf("name %q; want the joined node's, gpu-host", h.Name())
	}

	c, err := Dial(laptop, "gpu-host")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	v := kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32([]int64{4}, []float32{-1, 2, -3, 4})}
	for range 3 {
		if _, err := c.Compute(ctx, "relu", v); err != nil {
			t.Fatal(err)
		}
	}
	sess, err := c.OpenSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Alloc(ctx, sess.ID, "", 1024); err != nil {
		t.Fatal(err)
	}

	httpc := &http.Client{Transport: &http.Transport{DialContext: laptop.Dial}}
	defer httpc.CloseIdleConnections()
	res, err := httpc.Get("http://gpu-host:9090/metrics")
	if err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(res.Body)
	res.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	var metricCalls float64
	for _, m := range fams["gpumesh_calls_total"].GetMetric() {
		metricCalls += m.GetCounter().GetValue()
	}
	lines, err := audit.Tail(cfg.Audit.Path, 0)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	n, ns := seen, servers
	mu.Unlock()
	if n < 5 || len(lines) != n || int(metricCalls) != n {
		t.Errorf("calls seen: observer %d, audit log %d, metrics %g; want the same, at least 5", n, len(lines), metricCalls)
	}
	if ns != 1 {
		t.Errorf("OnServer ran %d times; want once", ns)
	}
	if b := fams["gpumesh_buffer_bytes"].GetMetric(); len(b) != 1 || b[0].GetGauge().GetValue() != 1024 {
		t.Errorf("gpumesh_buffer_bytes = %v; want the laptop's 1024 (the metrics read the server)", b)
	}

	// The local API, found without being told where, lists the host itself.
	found, err := diag.FindOne(ctx, diag.Search{RuntimeDirs: []string{cfg.LocalAPI.RuntimeDir}})
	if err != nil || found.Socket != h.LocalAPIPath() {
		t.Fatalf("FindOne = %+v, %v; want %s", found, err, h.LocalAPIPath())
	}
	rep, err := diag.LocalClient{Path: found.Socket}.Status(ctx, diag.Options{Hosts: []string{"laptop"}, Timeout: 5 * time.Second})
	if err != nil || rep.Self.Name != "gpu-host" || rep.Self.GPU == nil || rep.Self.GPU.Backend != "cpu" {
		t.Fatalf("status through the local API = %+v, %v; want gpu-host serving the cpu backend", rep.Self, err)
	}
	if _, err := (diag.LocalClient{Path: found.Socket}).QoS(ctx); err != nil {
		t.Errorf("live QoS through the local API: %v", err)
	}

	// On the tailnet the metrics are for the callers the policy grants
	// observe:metrics: without the grant, the laptop is refused.
	noScrape, _, _ := strings.Cut(partsPolicy, `rule "scrape"`)
	if err := os.WriteFile(polPath, []byte(noScrape), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := h.ReloadPolicy(); err != nil {
		t.Fatal(err)
	}
	if res, err := httpc.Get("http://gpu-host:9090/metrics"); err != nil || res.StatusCode != http.StatusForbidden {
		t.Errorf("metrics without observe:metrics = %v, %v; want 403 Forbidden", res, err)
	} else {
		res.Body.Close()
	}

	if err := h.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	want := []string{"local API", "metrics listener", "policy watch", "compute endpoint", "qos", "audit log", "backend", "overlay"}
	if !slices.Equal(stopped, want) {
		t.Errorf("Close stopped %v; want %v", stopped, want)
	}
	if err := h.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close = %v; want net.ErrClosed", err)
	}
	if err := h.Joined().Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("the joined overlay after Close: Close = %v; want net.ErrClosed (closed once, by the host)", err)
	}
	if _, err := os.Stat(h.LocalAPIPath()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("local API socket after Close: %v", err)
	}
	if _, err := diag.FindOne(ctx, diag.Search{RuntimeDirs: []string{cfg.LocalAPI.RuntimeDir}}); !errors.Is(err, diag.ErrNotRunning) {
		t.Errorf("FindOne after Close = %v; want none running", err)
	}
	if len(stopped) != len(want) {
		t.Errorf("a second Close stopped parts again: %v", stopped)
	}
}
