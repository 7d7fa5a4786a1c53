// Package node wires a gpumesh node together: one typed configuration
// (HostConfig) in; the overlay, policy watch, backend, QoS, audit log,
// metrics, compute server and local API constructed and connected; one
// owner (Host) that closes each of them once, in the reverse order of
// start. It holds no logic of its own; that lives in the rooms it connects
// (overlay, policy, gpusvc, qos, diag).
package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/gpumesh/gpumesh/diag"
	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/metrics"
	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/qos/engine"
)

// Host is a running GPU host: the compute endpoint inside the overlay and
// the parts around it.
type Host struct {
	cfg         HostConfig // populated
	joined      *Joined    // nil when the overlay was given
	backend     gpusvc.Backend
	srv         *gpusvc.Server
	ln          net.Listener
	qos         *engine.Engine // nil without QoS
	metricsAddr net.Addr
	api         *diag.LocalAPI
	serving     sync.WaitGroup // the server's Serve
	parts       parts          // everything to stop, in start order

	mu     sync.Mutex
	closed bool // guarded by mu
}

// StartHost starts a host as cfg says and returns once it serves. A
// half-built start is undone: what had started is closed again, in
// reverse order.
func StartHost(ctx context.Context, cfg HostConfig) (*Host, error) {
	return startHost(ctx, cfg, nil)
}

// startHost is StartHost telling onStop the name of each part it stops.
func startHost(ctx context.Context, cfg HostConfig, onStop func(string)) (_ *Host, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	h := &Host{}
	h.parts.onStop = onStop
	defer func() {
		if err != nil {
			h.parts.stop()
		}
	}()
	if cfg.Join != nil {
		if h.joined, err = Join(ctx, cfg.joinConfig()); err != nil {
			return nil, err
		}
		h.parts.add("overlay", h.joined.Close)
	}
	c := cfg.populate(h.joined)
	h.cfg = c
	log := c.Logger

	if h.backend = c.Backend.Ready; h.backend == nil {
		if h.backend, err = startBackend(ctx, c.Backend, log); err != nil {
			return nil, err
		}
		h.parts.add("backend", h.backend.Close)
	}
	var observers []func(gpusvc.CallRecord)
	if c.Audit != nil {
		alog, err := openAudit(c.Audit, log)
		if err != nil {
			return nil, err
		}
		h.parts.add("audit log", alog.Close)
		observers = append(observers, alog.Record)
	}
	var m *metrics.Metrics
	if c.Metrics != nil {
		if m, err = newMetrics(h.backend); err != nil {
			return nil, err
		}
		observers = append(observers, m.Record)
	}
	if c.QoS != nil {
		q := c.qosConfig(h.joined)
		if !q.NoOuterMarking && h.joined != nil && h.joined.ForeignUDP {
			log.Warn("outer DSCP marking is off: the WireGuard UDP sockets are tailscaled's, not gpumesh's; mark them in the firewall (e.g. nft add rule inet mangle output udp sport 41641 ip dscp set af41)")
		}
		if h.qos, err = startQoS(q, c.Policy, c.Overlay, log); err != nil {
			return nil, err
		}
		h.parts.add("qos", h.qos.Close)
	}

	scfg := c.Server
	scfg.Backend, scfg.WhoIs, scfg.Policy, scfg.Host, scfg.Logger = h.backend, c.Overlay.WhoIs, c.Policy.Current, c.Name, log
	scfg.OnCall = composeCalls(append(observers, c.OnCall)...)
	if h.qos != nil {
		scfg.WrapConn = qosConn(h.qos)
	}
	if h.srv, err = gpusvc.NewServer(scfg); err != nil {
		return nil, err
	}
	h.parts.add("compute endpoint", h.stopServer)
	if m != nil {
		m.SetUsage(usageOf(h.srv))
	}
	if c.OnServer != nil {
		c.OnServer(h.srv)
	}
	if h.ln, err = c.Overlay.Listen("tcp", ":"+strconv.Itoa(c.Port)); err != nil {
		return nil, fmt.Errorf("node: listen on the overlay port %d: %w", c.Port, err)
	}
	h.serving.Add(1)
	go func() {
		defer h.serving.Done()
		if err := h.srv.Serve(h.ln); err != nil {
			log.Info("compute endpoint stopped", "err", err)
		}
	}()

	h.parts.add("policy watch", h.watchPolicy())
	if m != nil {
		ms, err := serveMetrics(c.Metrics, m, c.Overlay, c.Policy.Current, log)
		if err != nil {
			return nil, err
		}
		h.metricsAddr = ms.addr
		h.parts.add("metrics listener", ms.close)
	}
	if c.LocalAPI != nil {
		n, ok := c.Overlay.(diag.Node)
		if !ok {
			log.Info("no local API: status and doctor look at tailnet nodes only")
			return h, nil
		}
		if h.api, err = ServeLocalAPI(*c.LocalAPI, n, c.Name, log); err != nil {
			return nil, err
		}
		h.parts.add("local API", h.api.Close)
		if h.qos != nil {
			h.api.SetQoS(func() any { return diag.LiveQoSOf(h.QoSStatus()) })
		}
		h.api.SetSelf(func(ctx context.Context) *diag.GPUHost {
			return diag.SelfGPUHost(c.Name, c.Port, h.backend.Info(ctx))
		})
	}
	return h, nil
}

// joinConfig is the overlay to join: a WireGuard mesh marks its outer
// packets as the QoS configuration says (unmarked without QoS).
func (c *HostConfig) joinConfig() JoinConfig {
	j := *c.Join
	if j.WireGuard != nil {
		w := *j.WireGuard
		w.DSCP = c.QoS.outerDSCP()
		j.WireGuard = &w
	}
	return j
}

// qosConfig is the QoS configuration with the joined tailnet's UDP port
// filled in when it names none.
func (c *HostConfig) qosConfig(j *Joined) *QoSConfig {
	q := *c.QoS
	switch {
	case q.NoOuterMarking:
		q.UDPPort = 0
	case q.UDPPort == 0 && j != nil:
		q.UDPPort = j.UDPPort
	}
	return &q
}

// watchPolicy reloads the policy when its file changes, until the
// returned stop.
func (h *Host) watchPolicy() (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := h.cfg.Policy.Watch(ctx); err != nil && !errors.Is(err, context.Canceled) {
			h.cfg.Logger.Warn("policy file watch stopped; reload with SIGHUP", "err", err)
		}
	}()
	return func() error {
		cancel()
		<-done
		return nil
	}
}

// stopServer stops the endpoint, letting calls in flight finish for a
// moment.
func (h *Host) stopServer() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h.srv.GracefulStop(ctx)
	h.serving.Wait()
	return nil
}

// Addr is the endpoint's listening address on the overlay.
func (h *Host) Addr() net.Addr { return h.ln.Addr() }

// Name is the name the host serves as.
func (h *Host) Name() string { return h.cfg.Name }

// Joined is the overlay node the host joined; nil when it was given one.
func (h *Host) Joined() *Joined { return h.joined }

// MetricsAddr is where the metrics are served; nil without metrics.
func (h *Host) MetricsAddr() net.Addr { return h.metricsAddr }

// LocalAPIPath is the local API's socket; "" when the host serves none.
func (h *Host) LocalAPIPath() string {
	if h.api == nil {
		return ""
	}
	return diag.SocketPath(h.cfg.LocalAPI.StateDir)
}

// Backend is the backend the host serves with (after BackendAuto's
// choice).
func (h *Host) Backend() gpusvc.Backend { return h.backend }

// ReloadPolicy re-reads the policy file; an invalid file, or one whose QoS
// the host cannot apply, is rejected with its diagnostics and the policy
// in force stays.
func (h *Host) ReloadPolicy() error { return h.cfg.Policy.Reload() }

// Close stops every part the host started, the last started first: the
// local API, the metrics listener, the policy watch, the endpoint (calls
// in flight finish for a moment), QoS, the audit log, the backend, and the
// overlay it joined. A second Close returns net.ErrClosed.
func (h *Host) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return net.ErrClosed
	}
	h.closed = true
	h.mu.Unlock()
	return h.parts.stop()
}

// Dial returns a client for the compute endpoint on host (a peer's name or
// overlay IP; ":port" optional), reached through ov.
func Dial(ov overlay.Overlay, host string) (*gpusvc.Client, error) {
	if _, _, err := net.SplitHostPort(host); err != nil {
		host = net.JoinHostPort(host, strconv.Itoa(gpusvc.DefaultPort))
	}
	return gpusvc.NewClient(host, ov.Dial)
}
