// Package node wires a gpumesh node together: an overlay that is already up,
// the policy store, a backend, the compute server and its listener. It holds
// no logic of its own; that lives in the rooms it connects (overlay, policy,
// gpusvc, qos).
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/policy"
)

// HostConfig configures a GPU host.
type HostConfig struct {
	// Overlay is the network the endpoint is served on. Required, and up.
	Overlay overlay.Overlay
	// Name is this node's name, reported to callers.
	Name string
	// Policy holds the policy in force. Required.
	Policy *policy.Store
	// Backend runs the kernels; nil means the CPU backend.
	Backend gpusvc.Backend
	// Port is the endpoint's TCP port on the overlay; 0 means gpusvc.DefaultPort.
	Port int
	// MaxRequestBytes caps one request; 0 means gpusvc.DefaultMaxRequestBytes.
	MaxRequestBytes int64
	// MaxMemory is the host's memory budget for what callers make it hold
	// (gpusvc.Config.MaxMemory); 0 means gpusvc.DefaultMaxMemory.
	MaxMemory int64
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
	// OnCall observes every finished call (audit, metrics, the demo).
	// Use AddOnCall to add an observer to those already set.
	OnCall func(gpusvc.CallRecord)
	// QoS, if set, marks the overlay's packets and schedules replies by
	// the callers' classes.
	QoS *QoSConfig
	// OnServer, if set, is called once with the compute server before it
	// serves, for observers that read its state (metrics).
	OnServer func(*gpusvc.Server)
}

// AddOnCall adds an observer of finished calls, keeping those already set.
func (c *HostConfig) AddOnCall(f func(gpusvc.CallRecord)) {
	prev := c.OnCall
	if prev == nil {
		c.OnCall = f
		return
	}
	c.OnCall = func(r gpusvc.CallRecord) {
		prev(r)
		f(r)
	}
}

// Host is a running GPU host: the compute endpoint inside the overlay.
type Host struct {
	srv     *gpusvc.Server
	ln      net.Listener
	backend gpusvc.Backend
	policy  *policy.Store
	qos     *qosParts
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	mu     sync.Mutex
	closed bool // guarded by mu
}

// StartHost serves the compute endpoint on the overlay and watches the
// policy file for changes. A half-built start is undone.
func StartHost(ctx context.Context, cfg HostConfig) (_ *Host, err error) {
	// Every early return below undoes what was started before it.
	if cfg.Overlay == nil || cfg.Policy == nil {
		return nil, errors.New("node: a host needs an overlay and a policy")
	}
	if cfg.Backend == nil {
		cfg.Backend = cpu.New()
	}
	if cfg.Port == 0 {
		cfg.Port = gpusvc.DefaultPort
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer func() {
		if err != nil {
			cancel()
		}
	}()
	qp := &qosParts{}
	if cfg.QoS != nil {
		if qp, err = startQoS(wctx, cfg.QoS, cfg.Policy, logger); err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				qp.close()
			}
		}()
	}
	scfg := gpusvc.Config{
		Backend:         cfg.Backend,
		WhoIs:           cfg.Overlay.WhoIs,
		Policy:          cfg.Policy.Current,
		Host:            cfg.Name,
		MaxRequestBytes: cfg.MaxRequestBytes,
		MaxMemory:       cfg.MaxMemory,
		Logger:          logger,
		OnCall:          cfg.OnCall,
	}
	if qp.sched != nil {
		scfg.WrapConn = qp.wrapConn(cfg.Policy)
	}
	if pp, ok := cfg.Overlay.(overlay.PeerPather); ok {
		qp.routePeers(wctx, pp, cfg.Overlay, cfg.Policy)
	}
	srv, err := gpusvc.NewServer(scfg)
	if err != nil {
		return nil, err
	}
	if cfg.OnServer != nil {
		cfg.OnServer(srv)
	}
	ln, err := cfg.Overlay.Listen("tcp", ":"+strconv.Itoa(cfg.Port))
	if err != nil {
		return nil, fmt.Errorf("node: listen on the overlay port %d: %w", cfg.Port, err)
	}
	h := &Host{srv: srv, ln: ln, backend: cfg.Backend, policy: cfg.Policy, cancel: cancel, qos: qp}
	h.wg.Add(2)
	go func() {
		defer h.wg.Done()
		if err := srv.Serve(ln); err != nil {
			logger.Info("compute endpoint stopped", "err", err)
		}
	}()
	go func() {
		defer h.wg.Done()
		if err := cfg.Policy.Watch(wctx); err != nil && !errors.Is(err, context.Canceled) {
			logger.Warn("policy file watch stopped; reload with SIGHUP", "err", err)
		}
	}()
	return h, nil
}

// Addr is the endpoint's listening address on the overlay.
func (h *Host) Addr() net.Addr { return h.ln.Addr() }

// ReloadPolicy re-reads the policy file; an invalid file, or one whose QoS
// the host cannot apply, is rejected with its diagnostics and the policy
// in force stays.
func (h *Host) ReloadPolicy() error { return h.policy.Reload() }

// Close stops the endpoint (letting calls in flight finish for a moment),
// the policy watch and the backend. A second Close returns net.ErrClosed.
func (h *Host) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return net.ErrClosed
	}
	h.closed = true
	h.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h.srv.GracefulStop(ctx)
	h.cancel()
	h.wg.Wait()
	h.qos.close()
	return h.backend.Close()
}

// Dial returns a client for the compute endpoint on host (a peer's name or
// overlay IP; ":port" optional), reached through ov.
func Dial(ov overlay.Overlay, host string) (*gpusvc.Client, error) {
	if _, _, err := net.SplitHostPort(host); err != nil {
		host = net.JoinHostPort(host, strconv.Itoa(gpusvc.DefaultPort))
	}
	return gpusvc.NewClient(host, ov.Dial)
}
