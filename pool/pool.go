package pool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/overlay"
)

// Network is what a pool needs of the overlay this process has joined:
// its peer list and a way to dial a peer. *tsnet.Node and *wg.Node are
// both.
type Network interface {
	overlay.PeerLister
	Dial(ctx context.Context, network, addr string) (net.Conn, error)
}

// Config configures a Pool. Target and Network are required; every other
// zero value means the default given.
type Config struct {
	// Target names the pool's peers: "tag:gpu", "gpu-a,gpu-b", "*".
	Target string
	// Network is the overlay the peers are found and reached on.
	Network Network
	// Port is the compute endpoint's port when Target names none; 0 means
	// gpusvc.DefaultPort.
	Port int
	// GPU is the GPU calls and sessions use ("0", a UUID); "" is each
	// host's default.
	GPU string
	// RefreshInterval is how often the peer list is read and each member
	// probed (Devices). 0 means 2s.
	RefreshInterval time.Duration
	// ProbeTimeout bounds one probe or Explain. 0 means 2s.
	ProbeTimeout time.Duration
	// DownAfter is how long a host that answered before may go without
	// answering before it is lost. 0 means 6s.
	DownAfter time.Duration
	// RetryInterval is how often a host that is down (lost, refusing, or
	// not serving) is probed again, backing off to 4 × RetryInterval while
	// it stays down. 0 means 5s.
	RetryInterval time.Duration
	// ForgetAfter is how long a host that left the peer list stays in
	// Hosts, down, before it is forgotten. 0 means 1m.
	ForgetAfter time.Duration
	// ExplainTTL is how long a host's answer to "may I run this kernel"
	// is used before asking again. 0 means 10s. A host's answers are
	// dropped sooner when a probe sees another policy version in force
	// there (it reloaded its policy), or when it refuses a call.
	ExplainTTL time.Duration
	// Idempotent says whether a kernel may run twice, so that a call
	// whose host was lost under it can be retried elsewhere. nil means
	// every built-in kernel (all are pure functions of their inputs).
	Idempotent func(kernel string) bool
	// ConnKernels are the kernels a connection placed by Dial is for (a
	// forwarder's clients): a host must allow all of them. Empty means a
	// host must allow at least one built-in kernel.
	ConnKernels []string
	// GRPCOptions are added to every host's client.
	GRPCOptions []grpc.DialOption
	// Logger receives state changes and failovers; nil discards them.
	Logger *slog.Logger

	// hooks let a test watch the pool ask its hosts' policies
	// (export_test.go); zero outside tests.
	hooks hooks
}

// hooks observe placement asking the hosts' policies.
type hooks struct {
	// asking is called by each goroutine that asks a host's policy, before
	// it asks.
	asking func(host string)
	// waiting is called by a caller about to wait for an answer being
	// asked.
	waiting func()
}

func (c *Config) populate() error {
	if c.Network == nil {
		return errors.New("pool: a network (the overlay this process joined) is required")
	}
	if c.Port == 0 {
		c.Port = gpusvc.DefaultPort
	}
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("pool: port %d out of range", c.Port)
	}
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{
		{&c.RefreshInterval, 2 * time.Second},
		{&c.ProbeTimeout, 2 * time.Second},
		{&c.DownAfter, 6 * time.Second},
		{&c.RetryInterval, 5 * time.Second},
		{&c.ExplainTTL, 10 * time.Second},
		{&c.ForgetAfter, time.Minute},
	} {
		if *d.v <= 0 {
			*d.v = d.def
		}
	}
	if c.Idempotent == nil {
		c.Idempotent = func(k string) bool { _, ok := kernel.Lookup(k); return ok }
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Pool is a set of GPU hosts found by a target, with placement and
// failover. It is safe for concurrent use. Its discovery goroutine and
// probes are owned by it; Close stops and waits for them.
type Pool struct {
	cfg    Config // defaults applied; immutable
	target Target
	log    *slog.Logger
	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
	kick   chan struct{} // asks the discovery loop to probe now
	first  chan struct{} // closed once the first round of probes is done

	placeMu    sync.Mutex // serialises choosing a host and counting the work placed there
	implicitMu sync.Mutex // serialises opening the pool's own session

	mu       sync.Mutex
	hosts    map[string]*host // by peer name; guarded by mu
	missing  []string         // listed names no peer has; guarded by mu
	listErr  error            // the peer list's last failure; guarded by mu
	changed  chan struct{}    // closed at the next change; guarded by mu
	closed   bool             // guarded by mu
	implicit *Session         // the session Alloc and friends use; guarded by mu
}

// New validates cfg and starts discovering the pool's hosts. It returns at
// once; Wait waits for the first round of probes.
func New(cfg Config) (*Pool, error) {
	t, err := ParseTarget(cfg.Target)
	if err != nil {
		return nil, err
	}
	if err := cfg.populate(); err != nil {
		return nil, err
	}
	if t.Port == 0 {
		t.Port = cfg.Port
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pool{
		cfg: cfg, target: t, log: cfg.Logger, ctx: ctx, cancel: cancel,
		kick: make(chan struct{}, 1), first: make(chan struct{}),
		hosts: make(map[string]*host), changed: make(chan struct{}),
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.run()
	}()
	return p, nil
}

// Dial starts a pool and waits for its first round of probes; it fails,
// closing the pool, when no host is ready then.
func Dial(ctx context.Context, cfg Config) (*Pool, error) {
	p, err := New(cfg)
	if err != nil {
		return nil, err
	}
	if err := p.Wait(ctx); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// ErrNoHost says no host of the pool can take the work; the error wrapping
// it says what each host answered.
var ErrNoHost = errors.New("pool: no host available")

// Wait blocks until the first peer list has been read and every member
// probed once, then reports ErrNoHost (with each member's state) if none
// is ready.
func (p *Pool) Wait(ctx context.Context) error {
	select {
	case <-p.first:
	case <-ctx.Done():
		return fmt.Errorf("pool %s: waiting for the first probes: %w", p.target, ctx.Err())
	}
	for _, h := range p.Hosts() {
		if h.State == StateReady {
			return nil
		}
	}
	return p.noHost("")
}

// Target returns the pool's target, port filled in.
func (p *Pool) Target() Target { return p.target }

// dial connects to a host's endpoint inside the overlay.
func (p *Pool) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return p.cfg.Network.Dial(ctx, network, addr)
}

// notify wakes those waiting on Changes.
func (p *Pool) notify() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed {
		close(p.changed)
		p.changed = make(chan struct{})
	}
}

// Changes returns a channel closed at the next change of the pool: a host
// joining, leaving, changing state or reporting another policy version.
// Read Hosts, then wait on a fresh
// Changes channel (a device plugin's ListAndWatch).
func (p *Pool) Changes() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.changed
}

// Snapshot returns the hosts, as Hosts does, and a channel closed at the
// next change after them, as Changes does, read so that no change falls
// between the two.
func (p *Pool) Snapshot() ([]HostInfo, <-chan struct{}) {
	ch := p.Changes()
	return p.Hosts(), ch
}

// goAsk runs ask in a goroutine of the pool's, which Close ends (through
// ask's context) and waits for; it reports false, running nothing, once
// the pool is closed.
func (p *Pool) goAsk(ask func(context.Context)) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		ask(p.ctx)
	}()
	return true
}

func (p *Pool) kickProbe() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// closeLost closes a lost host's client and connections, ending the calls
// and sessions on it.
func (p *Pool) closeLost(c *gpusvc.Client, conns []net.Conn) {
	for _, cn := range conns {
		cn.Close()
	}
	if c != nil {
		c.Close()
	}
}

func (p *Pool) logStateChange(h *host) {
	h.mu.Lock()
	state, err := h.state, h.err
	h.mu.Unlock()
	p.log.Info("pool: host state", "pool", p.target.String(), "host", h.name, "state", state.String(), "err", err)
}

// HostInfo describes one host of the pool.
type HostInfo struct {
	Name  string       `json:"name"`
	Addr  string       `json:"addr,omitempty"` // the endpoint, overlay ip:port
	Tags  []string     `json:"tags,omitempty"`
	Path  overlay.Path `json:"path"`
	State State        `json:"state"`
	// Err says why the host is not ready.
	Err   string    `json:"error,omitempty"`
	Since time.Time `json:"since"`
	// RTT is the least round trip of its recent probes.
	RTT time.Duration `json:"rtt"`
	// Backend and Devices are the host's last answer to Devices.
	Backend string `json:"backend,omitempty"`
	Load    Load   `json:"load"`
	// PolicyVersion names the policy the host last reported in force
	// (its digest); the pool's cached answers of its policy were given
	// under it. Empty for a host that does not report it.
	PolicyVersion string `json:"policy_version,omitempty"`
	// InFlight, Sessions and Conns are this pool's calls, sessions and
	// forwarded connections on the host; Placed counts the calls and
	// connections placed there so far.
	InFlight int    `json:"in_flight"`
	Sessions int    `json:"sessions"`
	Conns    int    `json:"conns"`
	Placed   uint64 `json:"placed"`
}

// Hosts returns the pool's hosts, sorted by name, with the names the
// target lists that no peer has as StateMissing.
func (p *Pool) Hosts() []HostInfo {
	p.mu.Lock()
	hs := make([]*host, 0, len(p.hosts))
	for _, h := range p.hosts {
		hs = append(hs, h)
	}
	missing := slices.Clone(p.missing)
	p.mu.Unlock()
	out := make([]HostInfo, 0, len(hs)+len(missing))
	for _, h := range hs {
		out = append(out, h.info())
	}
	for _, m := range missing {
		out = append(out, HostInfo{Name: m, State: StateMissing, Err: "no peer of this name"})
	}
	slices.SortFunc(out, func(a, b HostInfo) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func (h *host) info() HostInfo {
	h.mu.Lock()
	defer h.mu.Unlock()
	hi := HostInfo{
		Name: h.name, Addr: h.addr, Tags: slices.Clone(h.peer.Tags), Path: h.peer.Path, State: h.state,
		Since: h.since, RTT: h.rtt, Load: h.load, InFlight: h.outstanding, Sessions: h.sessions,
		Conns: len(h.conns), Placed: h.placed, PolicyVersion: h.policy,
	}
	if h.err != nil {
		hi.Err = h.err.Error()
	}
	if h.devices != nil {
		hi.Backend = h.devices.GetBackend()
	}
	return hi
}

// lookup returns the member named name.
func (p *Pool) lookup(name string) (*host, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	h, ok := p.hosts[name]
	return h, ok
}

// noHost is ErrNoHost with what each host answered.
func (p *Pool) noHost(what string, reasons ...string) error {
	if len(reasons) == 0 {
		for _, h := range p.Hosts() {
			r := h.Name + ": " + h.State.String()
			if h.Err != "" {
				r += " (" + h.Err + ")"
			}
			reasons = append(reasons, r)
		}
	}
	p.mu.Lock()
	listErr := p.listErr
	p.mu.Unlock()
	if len(reasons) == 0 {
		r := "no peer matches"
		if listErr != nil {
			r = "the peer list failed: " + listErr.Error()
		}
		reasons = append(reasons, r)
	}
	if what != "" {
		what = " for " + what
	}
	return fmt.Errorf("%w in %s%s: %s", ErrNoHost, p.target, what, strings.Join(reasons, "; "))
}

// Close stops discovery, closes the pool's own session (Alloc's) and
// every host's client, ending calls in flight and forwarded connections.
// Sessions opened with OpenSession stay open on their hosts until closed
// or idle for the host's idle timeout. A second Close returns
// net.ErrClosed.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return net.ErrClosed
	}
	p.closed = true
	implicit := p.implicit
	p.mu.Unlock()
	var err error
	if implicit != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err = implicit.Close(ctx); errors.Is(err, ErrHostLost) {
			err = nil // its host frees it at its idle timeout
		}
		cancel()
	}
	p.cancel()
	p.wg.Wait()
	p.mu.Lock()
	hs := p.hosts
	p.hosts = nil
	close(p.changed)
	p.mu.Unlock()
	for _, h := range hs {
		p.closeLost(h.remove(net.ErrClosed))
	}
	return err
}
