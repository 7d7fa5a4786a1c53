package node

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/policy"
)

// HostConfig configures a GPU host: which parts it runs and how they are
// connected. Each optional part is a field left nil (or zero) to go
// without it. StartHost checks it with Validate and starts from a
// populated copy, so one HostConfig may start several hosts.
//
// Ownership: the host closes everything it started, once each, in the
// reverse order of start (the overlay it joined last). What the caller
// hands in ready, Overlay, Policy and Backend.Ready, stays the caller's.
type HostConfig struct {
	// Overlay is an overlay that is up (the demo's, a test's node) to
	// serve on; the caller closes it after the host. Exactly one of
	// Overlay and Join is set.
	Overlay overlay.Overlay
	// Join is the overlay the host joins itself, and leaves last.
	Join *JoinConfig

	// Name is this node's name, reported to callers; "" means Join's
	// tailnet hostname.
	Name string
	// Policy holds the policy in force; the host watches its file and
	// reloads it. Required.
	Policy *policy.Store
	// Backend chooses what runs the kernels; the zero value is the CPU
	// backend.
	Backend BackendConfig
	// Port is the endpoint's TCP port on the overlay; 0 means
	// gpusvc.DefaultPort.
	Port int
	// Server holds the compute server's limits and timeouts
	// (MaxRequestBytes, IdentityTTL, DefaultIdleTimeout, ...), passed on as
	// they are. The host sets Backend, WhoIs, Policy, Host, Logger, OnCall
	// and WrapConn itself from the fields above: leave them zero here.
	Server gpusvc.Config

	// QoS, if set, marks the overlay's packets and schedules the replies
	// by the callers' classes.
	QoS *QoSConfig
	// Audit, if set, writes one line per call to a log file.
	Audit *AuditConfig
	// Metrics, if set, serves Prometheus metrics.
	Metrics *MetricsConfig
	// LocalAPI, if set, serves `gpumesh status`, `doctor` and `qos status`
	// on a Unix socket, when the overlay is a tailnet node.
	LocalAPI *LocalAPIConfig

	// Logger receives the host's logs; nil discards them.
	Logger *slog.Logger
	// OnCall observes every finished call, after the audit log and the
	// metrics. AddOnCall composes several.
	OnCall func(gpusvc.CallRecord)
	// OnServer is called once with the compute server before it serves,
	// after the metrics' own observer. AddOnServer composes several.
	OnServer func(*gpusvc.Server)
}

// AuditConfig says where the audit log goes: one JSON line per call
// (gpusvc/audit), rotated by size.
type AuditConfig struct {
	// Path is the log file. Required.
	Path string
	// MaxBytes rotates the log at this size; 0 means audit.DefaultMaxBytes.
	MaxBytes int64
	// Keep is how many rotated files (Path.1 ... Path.N) are kept; 0
	// keeps none.
	Keep int
}

// MetricsConfig says where Prometheus metrics are served.
type MetricsConfig struct {
	// Listen is "tailnet:PORT", on the overlay only and for the callers
	// the policy grants observe:metrics, or a loopback HOST:PORT
	// ("127.0.0.1:9090", "localhost:9090", "[::1]:9090"). The metrics name
	// who uses the GPUs, so no other address is accepted.
	Listen string
}

// LocalAPIConfig says where a host's local API listens.
type LocalAPIConfig struct {
	// StateDir holds its socket (diag.SocketPath); "" means the state dir
	// of the tailnet node the host joined.
	StateDir string
	// RuntimeDir is where the host makes itself known to commands given
	// no flags (diag.Register); "" means diag.RuntimeDir().
	RuntimeDir string
}

// AddOnCall adds an observer of finished calls after those already set.
func (c *HostConfig) AddOnCall(f func(gpusvc.CallRecord)) {
	c.OnCall = composeCalls(c.OnCall, f)
}

// AddOnServer adds an observer of the compute server after those already
// set.
func (c *HostConfig) AddOnServer(f func(*gpusvc.Server)) {
	prev := c.OnServer
	if prev == nil {
		c.OnServer = f
		return
	}
	c.OnServer = func(s *gpusvc.Server) {
		prev(s)
		f(s)
	}
}

// composeCalls is one observer calling each of fs (nil ones left out) in
// turn.
func composeCalls(fs ...func(gpusvc.CallRecord)) func(gpusvc.CallRecord) {
	var all []func(gpusvc.CallRecord)
	for _, f := range fs {
		if f != nil {
			all = append(all, f)
		}
	}
	switch len(all) {
	case 0:
		return nil
	case 1:
		return all[0]
	}
	return func(r gpusvc.CallRecord) {
		for _, f := range all {
			f(r)
		}
	}
}

// Validate reports the first thing wrong with c, without starting
// anything.
func (c *HostConfig) Validate() error {
	switch {
	case c.Overlay == nil && c.Join == nil:
		return errors.New("node: a host needs an overlay: Overlay (up) or Join")
	case c.Overlay != nil && c.Join != nil:
		return errors.New("node: a host takes Overlay or Join, not both")
	case c.Policy == nil:
		return errors.New("node: a host needs a policy store")
	case c.Port < 0 || c.Port > 65535:
		return fmt.Errorf("node: port %d: want 1-65535, or 0 for %d", c.Port, gpusvc.DefaultPort)
	}
	if c.Join != nil {
		if err := c.Join.validate(); err != nil {
			return err
		}
	}
	if err := c.Backend.validate(); err != nil {
		return err
	}
	s := c.Server
	if s.Backend != nil || s.WhoIs != nil || s.Policy != nil || s.Host != "" || s.Logger != nil || s.OnCall != nil || s.WrapConn != nil {
		return errors.New("node: Server's Backend, WhoIs, Policy, Host, Logger, OnCall and WrapConn are the host's to set: use HostConfig's Backend, Policy, Name, Logger and OnCall")
	}
	if s.MaxRequestBytes < 0 {
		return fmt.Errorf("node: max request size %d: want a positive size, or 0 for the default", s.MaxRequestBytes)
	}
	if q := c.QoS; q != nil && (q.ShapeRate < 0 || q.LinkRate < 0) {
		return errors.New("node: QoS rates must be 0 or positive")
	}
	if a := c.Audit; a != nil {
		switch {
		case a.Path == "":
			return errors.New("node: the audit log needs a path")
		case a.MaxBytes < 0:
			return fmt.Errorf("node: audit log size %d: want a positive size, or 0 for the default", a.MaxBytes)
		case a.Keep < 0:
			return fmt.Errorf("node: audit logs to keep %d: want 0 or more", a.Keep)
		}
	}
	if m := c.Metrics; m != nil {
		if _, _, err := metricsAddr(m.Listen); err != nil {
			return err
		}
	}
	if c.LocalAPI != nil && c.LocalAPI.StateDir == "" && (c.Join == nil || c.Join.Tailnet == nil) {
		return errors.New("node: the local API needs a state dir unless the host joins a tailnet")
	}
	return nil
}

// populate returns a copy of c with its defaults filled in; j is the
// overlay the host joined, nil when c.Overlay was given.
func (c HostConfig) populate(j *Joined) HostConfig {
	if j != nil {
		c.Overlay = j.Overlay
		if c.Name == "" {
			c.Name = j.Name
		}
		if c.LocalAPI != nil && c.LocalAPI.StateDir == "" {
			api := *c.LocalAPI
			api.StateDir = j.StateDir
			c.LocalAPI = &api
		}
	}
	if c.Port == 0 {
		c.Port = gpusvc.DefaultPort
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// metricsAddr parses MetricsConfig.Listen: a tailnet port (onOverlay), or
// a loopback address to listen on.
func metricsAddr(listen string) (addr string, onOverlay bool, err error) {
	if port, ok := strings.CutPrefix(listen, "tailnet:"); ok {
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return "", false, fmt.Errorf("node: metrics at %q: want tailnet:PORT with a port from 1 to 65535", listen)
		}
		return ":" + port, true, nil
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", false, fmt.Errorf("node: metrics at %q: want HOST:PORT on loopback, or tailnet:PORT: %w", listen, err)
	}
	if host == "localhost" {
		return net.JoinHostPort("127.0.0.1", port), false, nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return "", false, fmt.Errorf("node: metrics at %q: not a loopback address: metrics name who uses the GPUs, so they are served on loopback or the tailnet only (tailnet:PORT)", listen)
	}
	return listen, false, nil
}
