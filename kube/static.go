package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/preface"
	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/pool"
)

// StaticConfig configures StaticHosts.
type StaticConfig struct {
	// Names are the GPU hosts' tailnet names (or overlay IPs), probed
	// whether or not they are online. Names or Target is required.
	Names []string
	// Target finds more hosts in the overlay's peer list each round, as a
	// pool does (pool.ParseTarget: "tag:gpu", "*", a list): each online
	// peer it matches is probed from then on. A host found so that leaves
	// the peer list stays, unhealthy, for ForgetAfter, then is dropped.
	// The Overlay must list its peers (overlay.PeerLister).
	Target string
	// ForgetAfter: see Target; 0 means 10m.
	ForgetAfter time.Duration
	// Overlay reaches the hosts and says who they are (their tags).
	// Required, and up.
	Overlay overlay.Overlay
	// Port is the hosts' compute port; 0 means gpusvc.DefaultPort.
	Port int
	// Interval is how often every host is probed; 0 means 5s.
	Interval time.Duration
	// Timeout bounds one probe; a host that does not answer within it is
	// unhealthy. 0 means 3s.
	Timeout time.Duration
	// NamePods: the agent names its pods to the hosts (TunnelConfig's
	// NamePods), so its probes start with the agent's own preface.
	NamePods bool
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
}

// StaticHosts is Hosts over a list of host names, fixed or found by a
// Target in the peer list, each probed with a Devices call every
// Interval: a host is healthy while it answers.
type StaticHosts struct {
	cfg    StaticConfig
	log    *slog.Logger
	cancel context.CancelFunc
	wg     sync.WaitGroup
	target *pool.Target       // nil without cfg.Target
	peers  overlay.PeerLister // with target
	// probes: one per host; cfg.Names first, then those the target found.
	// Only round changes it, and rounds do not overlap.
	probes []*probe

	mu      sync.Mutex
	names   map[string]bool // the probed hosts, for Dial; guarded by mu
	hosts   []Host          // sorted by name; guarded by mu
	changed chan struct{}   // closed when hosts change; guarded by mu
	closed  bool            // guarded by mu
}

var _ Hosts = (*StaticHosts)(nil)

// StartStatic probes every host once, so that the first Snapshot says what
// answered, then keeps probing until Close.
func StartStatic(ctx context.Context, cfg StaticConfig) (*StaticHosts, error) {
	if cfg.Overlay == nil {
		return nil, errors.New("kube: static hosts need an overlay")
	}
	if len(cfg.Names) == 0 && cfg.Target == "" {
		return nil, errors.New("kube: no GPU hosts given (names or a target)")
	}
	seen := make(map[string]bool)
	for _, n := range cfg.Names {
		if n == "" || seen[n] {
			return nil, fmt.Errorf("kube: host name %q is empty or given twice", n)
		}
		seen[n] = true
	}
	if cfg.Port == 0 {
		cfg.Port = gpusvc.DefaultPort
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 5 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 3 * time.Second
	}
	if cfg.ForgetAfter <= 0 {
		cfg.ForgetAfter = 10 * time.Minute
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &StaticHosts{cfg: cfg, log: log, changed: make(chan struct{}), names: make(map[string]bool)}
	if cfg.Target != "" {
		t, err := pool.ParseTarget(cfg.Target)
		if err != nil {
			return nil, fmt.Errorf("kube: GPU hosts: %w", err)
		}
		pl, ok := cfg.Overlay.(overlay.PeerLister)
		if !ok {
			return nil, fmt.Errorf("kube: GPU hosts %s: the overlay does not list its peers", cfg.Target)
		}
		if t.Port != 0 && t.Port != cfg.Port {
			return nil, fmt.Errorf("kube: GPU hosts %s: the port is %d", cfg.Target, cfg.Port)
		}
		s.target, s.peers = &t, pl
	}
	for _, n := range cfg.Names {
		s.addProbe(n, false)
	}
	s.round(ctx)
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.run(pctx)
	}()
	return s, nil
}

// Snapshot implements Hosts.
func (s *StaticHosts) Snapshot() ([]Host, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hosts, s.changed
}

// Dial implements Hosts: it connects to a listed host's compute port.
func (s *StaticHosts) Dial(ctx context.Context, name string) (net.Conn, error) {
	s.mu.Lock()
	ok := s.names[name]
	s.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("kube: %q is not one of the GPU hosts", name)
	}
	return s.cfg.Overlay.Dial(ctx, "tcp", net.JoinHostPort(name, strconv.Itoa(s.cfg.Port)))
}

func (s *StaticHosts) run(ctx context.Context) {
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.round(ctx)
	}
}

// maxHosts bounds the hosts a target finds.
const maxHosts = 256

func (s *StaticHosts) addProbe(name string, found bool) {
	s.probes = append(s.probes, &probe{name: name, found: found, target: net.JoinHostPort(name, strconv.Itoa(s.cfg.Port)), ov: s.cfg.Overlay, namePods: s.cfg.NamePods})
	s.mu.Lock()
	s.names[name] = true
	s.mu.Unlock()
}

// discover probes the online peers the target matches from now on, and
// drops those found before that have been gone for ForgetAfter.
func (s *StaticHosts) discover(ctx context.Context) {
	lctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	peers, err := s.peers.Peers(lctx)
	cancel()
	if err != nil {
		s.log.Warn("kube: reading the peer list for GPU hosts", "target", s.cfg.Target, "err", err)
		return
	}
	now := time.Now()
	online := make(map[string]bool)
	for _, m := range s.target.Members(peers) {
		// Hosts are dialed by name: a peer without one is not probed.
		if m.Peer.Name != "" {
			online[m.Name] = true
		}
	}
	var keep []*probe
	for _, p := range s.probes {
		switch {
		case !p.found || online[p.name]:
			p.gone = time.Time{}
		case p.gone.IsZero():
			p.gone = now
		case now.Sub(p.gone) >= s.cfg.ForgetAfter:
			s.log.Info("kube: GPU host forgotten: it left the tailnet", "host", p.name, "target", s.cfg.Target)
			p.close()
			s.mu.Lock()
			delete(s.names, p.name)
			s.mu.Unlock()
			continue
		}
		keep = append(keep, p)
	}
	s.probes = keep
	for _, n := range slices.Sorted(maps.Keys(online)) {
		if slices.ContainsFunc(s.probes, func(p *probe) bool { return p.name == n }) {
			continue
		}
		if len(s.probes) >= maxHosts {
			s.log.Warn("kube: too many GPU hosts; not probing more", "target", s.cfg.Target, "max", maxHosts, "host", n)
			break
		}
		s.log.Info("kube: GPU host found", "host", n, "target", s.cfg.Target)
		s.addProbe(n, true)
	}
}

// round probes every host at once and publishes the result if it changed.
func (s *StaticHosts) round(ctx context.Context) {
	if s.target != nil {
		s.discover(ctx)
	}
	hosts := make([]Host, len(s.probes))
	var wg sync.WaitGroup
	for i, p := range s.probes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
			defer cancel()
			hosts[i] = p.run(pctx)
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	slices.SortFunc(hosts, func(a, b Host) int { return strings.Compare(a.Name, b.Name) })
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || slices.EqualFunc(hosts, s.hosts, Host.Equal) {
		return
	}
	for _, h := range hosts {
		if old, ok := Find(s.hosts, h.Name); !ok || old.Healthy != h.Healthy {
			s.log.Info("kube: GPU host", "host", h.Name, "healthy", h.Healthy, "problem", h.Problem, "devices", len(h.Devices))
		}
	}
	s.hosts = hosts
	close(s.changed)
	s.changed = make(chan struct{})
}

// Close stops probing. A second Close returns net.ErrClosed.
func (s *StaticHosts) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return net.ErrClosed
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	for _, p := range s.probes {
		p.close()
	}
	return nil
}

// probe asks one host for its devices. It is run by one goroutine at a
// time (a round waits for all its probes), but its client dials from
// gRPC's goroutines.
type probe struct {
	name string
	// found: the target found it (not one of the names); gone: when it
	// left the peer list, zero while it is there. Read and written by
	// rounds only.
	found  bool
	gone   time.Time
	target string
	ov     overlay.Overlay
	// namePods: each connection starts with the agent's own preface.
	namePods bool
	client   *gpusvc.Client // nil until the first probe, and after a failed one
	last     Host           // the last answer, kept while the host is down

	mu     sync.Mutex
	remote net.Addr // the host's overlay address, from the client's last dial; guarded by mu
}

func (p *probe) run(ctx context.Context) Host {
	if p.client == nil {
		c, err := gpusvc.NewClient(p.target, func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := p.ov.Dial(ctx, network, addr)
			if err == nil && p.namePods {
				if err = preface.Handshake(ctx, conn, preface.Preface{Op: preface.Connect}); err != nil {
					conn.Close()
					return nil, err
				}
			}
			if err == nil {
				p.mu.Lock()
				p.remote = conn.RemoteAddr()
				p.mu.Unlock()
			}
			return conn, err
		})
		if err != nil {
			return p.down(err)
		}
		p.client = c
	}
	res, err := p.client.Devices(ctx)
	if err != nil {
		// A fresh connection next time: one that went quiet may be dead.
		p.close()
		return p.down(err)
	}
	h := Host{Name: p.name, Backend: res.GetBackend(), Healthy: true}
	for _, g := range pool.LoadOf(res).GPUs {
		h.Devices = append(h.Devices, Device{
			Index: int(g.Index), UUID: g.UUID, Model: g.Name, MemoryBytes: g.MemoryTotal,
			CUDAVersion: g.CUDAVersion, DriverVersion: g.DriverVersion,
		})
	}
	p.mu.Lock()
	remote := p.remote
	p.mu.Unlock()
	if remote != nil {
		if id, err := p.ov.WhoIs(ctx, remote.String()); err == nil {
			h.Tags = slices.Clone(id.Tags)
			slices.Sort(h.Tags)
		}
	}
	p.last = h
	return h
}

func (p *probe) down(err error) Host {
	h := p.last
	h.Name, h.Healthy, h.Problem = p.name, false, err.Error()
	return h
}

func (p *probe) close() {
	if p.client != nil {
		p.client.Close()
		p.client = nil
	}
}
