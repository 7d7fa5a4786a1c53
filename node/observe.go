package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gpumesh/gpumesh/diag"
	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/audit"
	"github.com/gpumesh/gpumesh/gpusvc/metrics"
	"github.com/gpumesh/gpumesh/gpusvc/worker"
	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/policy"
)

// openAudit opens the audit log; its write errors are logged once.
func openAudit(cfg *AuditConfig, log *slog.Logger) (*audit.Log, error) {
	keep := cfg.Keep
	if keep == 0 {
		keep = -1 // audit.Options: negative keeps none
	}
	var once sync.Once
	l, err := audit.Open(cfg.Path, audit.Options{MaxBytes: cfg.MaxBytes, Keep: keep, OnError: func(err error) {
		once.Do(func() { log.Error("audit log failing; calls go on unlogged", "err", err) })
	}})
	if err != nil {
		return nil, fmt.Errorf("node: audit log: %w", err)
	}
	return l, nil
}

// newMetrics builds the metrics registry for a host serving backend: call
// metrics, GPU telemetry and, when the backend runs workers, theirs.
func newMetrics(backend gpusvc.Backend) (*metrics.Metrics, error) {
	m, err := metrics.New(metrics.Config{
		Info:  backend.Info,
		Class: func(r gpusvc.CallRecord) string { return r.Class },
	})
	if err != nil {
		return nil, fmt.Errorf("node: metrics: %w", err)
	}
	if s, ok := backend.(interface{ Stats() worker.Stats }); ok {
		m.Registry().MustRegister(metrics.WorkerCollector(s.Stats))
	}
	return m, nil
}

// usageOf reads what each identity holds on srv, for the metrics.
func usageOf(srv *gpusvc.Server) func() []metrics.Usage {
	return func() []metrics.Usage {
		var out []metrics.Usage
		for _, u := range srv.Usage() {
			out = append(out, metrics.Usage{Identity: u.Identity, Sessions: u.Sessions, Buffers: u.Buffers, Bytes: u.Bytes})
		}
		return out
	}
}

// metricsServer serves /metrics where cfg says until its close.
type metricsServer struct {
	srv  *http.Server
	addr net.Addr
	wg   sync.WaitGroup
}

// serveMetrics listens where cfg says and serves m there: on a loopback
// address to anyone on this machine, on a tailnet port (on ov) only to the
// callers pol grants policy.RightMetrics.
func serveMetrics(cfg *MetricsConfig, m *metrics.Metrics, ov overlay.Overlay, pol func() *policy.Policy, log *slog.Logger) (*metricsServer, error) {
	addr, onOverlay, err := metricsAddr(cfg.Listen)
	if err != nil {
		return nil, err
	}
	var ln net.Listener
	if onOverlay {
		ln, err = ov.Listen("tcp", addr)
	} else {
		ln, err = net.Listen("tcp", addr)
	}
	if err != nil {
		return nil, fmt.Errorf("node: metrics at %s: %w", cfg.Listen, err)
	}
	handler := m.Handler()
	if onOverlay {
		handler = metrics.Access{WhoIs: ov.WhoIs, Policy: pol, Logf: func(format string, args ...any) { log.Info(fmt.Sprintf(format, args...)) }}.Restrict(handler)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", handler)
	s := &metricsServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, addr: ln.Addr()}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics listener stopped", "err", err)
		}
	}()
	return s, nil
}

// close stops serving, letting scrapes in flight finish for a moment.
func (s *metricsServer) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = s.srv.Close()
	}
	s.wg.Wait()
	return err
}

// ServeLocalAPI serves the local API for the tailnet node n, named name,
// on the socket in cfg's state dir (required here) and makes it known in
// its runtime dir, so that status and doctor find it without flags. Not
// being known is logged, not fatal: --state-dir still reaches the node. A
// host serves it when its HostConfig.LocalAPI is set; `gpumesh up` calls
// it for its client node.
func ServeLocalAPI(cfg LocalAPIConfig, n diag.Node, name string, log *slog.Logger) (*diag.LocalAPI, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("node: the local API needs a state dir")
	}
	api, err := diag.ServeLocal(diag.SocketPath(cfg.StateDir), n)
	if err != nil {
		return nil, fmt.Errorf("node: local API: %w", err)
	}
	dir := cfg.RuntimeDir
	if dir == "" {
		dir = diag.RuntimeDir()
	}
	if dir != "" {
		if err := api.Register(dir, name); err != nil {
			log.Warn("status and doctor without flags will not find this node", "err", err)
		}
	}
	return api, nil
}
