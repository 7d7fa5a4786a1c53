package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/pflag"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/audit"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	"github.com/gpumesh/gpumesh/gpusvc/metrics"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/policy"
)

// The audit log and the metrics listener of `gpumesh serve`.

type observeFlags struct {
	auditLog      string
	auditMaxSize  string
	auditKeep     int
	metricsListen string
}

var observe observeFlags

func init() {
	addServeHook(serveHook{
		flags: func(fs *pflag.FlagSet) {
			observe = observeFlags{}
			fs.StringVar(&observe.auditLog, "audit-log", "", "append one JSON line per call to `FILE` (read it with 'gpumesh audit tail')")
			fs.StringVar(&observe.auditMaxSize, "audit-max-size", "100MiB", "rotate the audit log at this size")
			fs.IntVar(&observe.auditKeep, "audit-keep", audit.DefaultKeep, "rotated audit logs to keep (FILE.1 ... FILE.N)")
			fs.StringVar(&observe.metricsListen, "metrics-listen", "", `serve Prometheus metrics at /metrics on a loopback address (127.0.0.1:9090) or on the tailnet only ("tailnet:9090")`)
		},
		apply: func(ctx context.Context, cfg *node.HostConfig) (func(), error) {
			o, err := startObserve(ctx, observe, cfg)
			if err != nil {
				return nil, err
			}
			return o.stop, nil
		},
	})
}

// observer is what the flags started: the audit log, the metrics server.
type observer struct {
	audit       *audit.Log
	metrics     *metrics.Metrics
	metricsAddr net.Addr // nil without --metrics-listen
	srv         *http.Server
	wg          sync.WaitGroup
}

// startObserve opens the audit log and starts the metrics listener the
// flags ask for, and adds their observers to cfg. stop undoes it all.
func startObserve(_ context.Context, f observeFlags, cfg *node.HostConfig) (_ *observer, err error) {
	o := &observer{}
	defer func() {
		if err != nil {
			o.stop()
		}
	}()
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if f.auditLog != "" {
		max, err := policy.ParseSize(f.auditMaxSize)
		if err != nil {
			return nil, fmt.Errorf("--audit-max-size: %w", err)
		}
		if max <= 0 {
			return nil, fmt.Errorf("--audit-max-size must be positive, got %q", f.auditMaxSize)
		}
		if f.auditKeep < 0 {
			return nil, fmt.Errorf("--audit-keep must be 0 or more, got %d", f.auditKeep)
		}
		keep := f.auditKeep
		if keep == 0 {
			keep = -1 // audit.Options: negative keeps none
		}
		var once sync.Once
		o.audit, err = audit.Open(f.auditLog, audit.Options{MaxBytes: max, Keep: keep, OnError: func(err error) {
			once.Do(func() { log.Error("audit log failing; calls go on unlogged", "err", err) })
		}})
		if err != nil {
			return nil, fmt.Errorf("--audit-log: %w", err)
		}
		cfg.AddOnCall(o.audit.Record)
	}
	if f.metricsListen == "" {
		return o, nil
	}
	ln, err := metricsListener(cfg, f.metricsListen)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen: %w", err)
	}
	if cfg.Backend == nil {
		cfg.Backend = cpu.New() // what StartHost would pick, made here so it can be asked
	}
	o.metrics, err = metrics.New(metrics.Config{
		// Asked at scrape time: a later hook may still swap the backend.
		Info:  func(ctx context.Context) gpusvc.Info { return cfg.Backend.Info(ctx) },
		Class: func(r gpusvc.CallRecord) string { return r.Class },
	})
	if err != nil {
		ln.Close()
		return nil, err
	}
	if c := newWorkerCollector(cfg.Backend); c != nil {
		o.metrics.Registry().MustRegister(c)
	}
	cfg.AddOnCall(o.metrics.Record)
	m := o.metrics
	cfg.OnServer = func(srv *gpusvc.Server) {
		m.SetUsage(func() []metrics.Usage {
			var out []metrics.Usage
			for _, u := range srv.Usage() {
				out = append(out, metrics.Usage{Identity: u.Identity, Sessions: u.Sessions, Buffers: u.Buffers, Bytes: u.Bytes})
			}
			return out
		})
	}
	mux := http.NewServeMux()
	handler := o.metrics.Handler()
	if strings.HasPrefix(f.metricsListen, "tailnet:") {
		// On the tailnet, only callers the policy grants observe:metrics.
		handler = metrics.Access{WhoIs: cfg.Overlay.WhoIs, Policy: cfg.Policy.Current,
			Logf: func(format string, args ...any) { log.Info(fmt.Sprintf(format, args...)) }}.Restrict(handler)
	}
	mux.Handle("/metrics", handler)
	o.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	o.metricsAddr = ln.Addr()
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		if err := o.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics listener stopped", "err", err)
		}
	}()
	return o, nil
}

// metricsListener listens where --metrics-listen says: "tailnet:PORT" on the
// overlay only, otherwise a loopback address. Metrics name the callers, so
// other addresses are refused.
func metricsListener(cfg *node.HostConfig, addr string) (net.Listener, error) {
	if port, ok := strings.CutPrefix(addr, "tailnet:"); ok {
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return nil, fmt.Errorf("%q: want tailnet:PORT with a port from 1 to 65535", addr)
		}
		if cfg.Overlay == nil {
			return nil, errors.New("tailnet listener without an overlay")
		}
		return cfg.Overlay.Listen("tcp", ":"+port)
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("%q: want HOST:PORT on loopback, or tailnet:PORT: %w", addr, err)
	}
	if host != "localhost" {
		ip := net.ParseIP(host)
		if ip == nil || !ip.IsLoopback() {
			return nil, fmt.Errorf("%q is not a loopback address: metrics name who uses the GPUs, so they are served on loopback or the tailnet only (tailnet:PORT)", addr)
		}
	}
	if host == "localhost" {
		addr = net.JoinHostPort("127.0.0.1", addr[strings.LastIndexByte(addr, ':')+1:])
	}
	return net.Listen("tcp", addr)
}

// stop closes the metrics server and the audit log. Safe on a half-started
// observer.
func (o *observer) stop() {
	if o.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		o.srv.Shutdown(ctx)
		cancel()
		o.srv.Close()
	}
	o.wg.Wait()
	if o.audit != nil {
		o.audit.Close()
	}
}
