package forward

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DialFunc opens a connection inside the overlay; overlay.Overlay's Dial
// is one.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// ErrNotLoopback is returned for a listen address that is not on loopback
// when Config.AllowNonLoopback is not set.
var ErrNotLoopback = errors.New("forward: listen address is not loopback")

// Rule is one forward: connections accepted on Listen go to Target.
type Rule struct {
	// Listen is the local address: "localhost:50051" (127.0.0.1 and ::1),
	// a loopback IP and port, or with AllowNonLoopback any address. Port 0
	// picks a free port.
	Listen string
	// Target is the overlay address, "host:port"; host is a peer's name or
	// overlay IP.
	Target string
}

// String returns the rule as ParseRule reads it.
func (r Rule) String() string { return r.Listen + "=" + r.Target }

// ParseRule reads "LISTEN=HOST[:PORT]", as the --forward flag takes it.
// LISTEN is "host:port" or a bare port (on localhost); a target without a
// port gets defaultPort.
func ParseRule(s string, defaultPort int) (Rule, error) {
	listen, target, ok := strings.Cut(s, "=")
	if !ok || listen == "" || target == "" {
		return Rule{}, fmt.Errorf("forward: rule %q: want LISTEN=HOST[:PORT], e.g. localhost:50051=gpu-host", s)
	}
	if _, err := strconv.ParseUint(listen, 10, 16); err == nil {
		listen = net.JoinHostPort("localhost", listen)
	}
	if _, port, err := net.SplitHostPort(listen); err != nil {
		return Rule{}, fmt.Errorf("forward: rule %q: listen address: %w", s, err)
	} else if err := checkPort(port); err != nil {
		return Rule{}, fmt.Errorf("forward: rule %q: listen address: %w", s, err)
	}
	host, port, err := net.SplitHostPort(target)
	if err != nil {
		host, port = target, strconv.Itoa(defaultPort)
		if strings.Contains(host, ":") && !strings.HasPrefix(host, "[") {
			// A bare IPv6 address.
			if _, perr := netip.ParseAddr(host); perr != nil {
				return Rule{}, fmt.Errorf("forward: rule %q: target: %w", s, err)
			}
		}
		host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	}
	if host == "" || strings.ContainsAny(host, " /=[]") {
		return Rule{}, fmt.Errorf("forward: rule %q: target needs a host name or overlay IP", s)
	}
	if err := checkPort(port); err != nil {
		return Rule{}, fmt.Errorf("forward: rule %q: target: %w", s, err)
	}
	if port == "0" {
		return Rule{}, fmt.Errorf("forward: rule %q: target port 0", s)
	}
	return Rule{Listen: listen, Target: net.JoinHostPort(host, port)}, nil
}

func checkPort(p string) error {
	if _, err := strconv.ParseUint(p, 10, 16); err != nil {
		return fmt.Errorf("port %q is not a number from 0 to 65535", p)
	}
	return nil
}

// Config configures a Forwarder.
type Config struct {
	// Dial connects into the overlay. Required.
	Dial DialFunc
	// Rules are the forwards to run; at least one.
	Rules []Rule
	// AllowNonLoopback lets a rule listen on an address other than
	// loopback. Anyone who can reach such a listener uses the GPU host with
	// this node's identity.
	AllowNonLoopback bool
	// DialTimeout bounds one dial into the overlay; when it fails the local
	// connection is reset, so a gRPC client sees Unavailable rather than a
	// hang. 0 means 5s.
	DialTimeout time.Duration
	// ProbeInterval is how often a rule with open connections checks that
	// its host still answers, by opening (and at once closing) a new
	// connection to it. When that fails within DialTimeout, the rule's open
	// connections are reset: a host that vanished without closing them
	// (power loss, a crash, leaving the overlay) gives its clients
	// Unavailable instead of calls that hang until their deadline.
	// 0 means 5s; negative turns probing off.
	ProbeInterval time.Duration
	// Logger receives debug logs; nil discards them.
	Logger *slog.Logger
}

// DefaultDialTimeout is the dial timeout when Config sets none.
const DefaultDialTimeout = 5 * time.Second

// DefaultProbeInterval is the probe interval when Config sets none.
const DefaultProbeInterval = 5 * time.Second

// Forward describes one running rule.
type Forward struct {
	Rule Rule
	// Addrs are the local addresses it listens on.
	Addrs []net.Addr
}

// Forwarder runs forwards. Its accept loops and connection goroutines are
// owned by it; Close stops and waits for all of them.
type Forwarder struct {
	cfg      Config
	log      *slog.Logger
	forwards []Forward
	lns      []net.Listener
	ctx      context.Context // cancelled by Close: aborts dials in progress
	cancel   context.CancelFunc
	wg       sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]connInfo // open connections, both sides; guarded by mu
	closed bool                  // guarded by mu
}

// withDefaults checks what Start and StartUnix both need and fills in the
// defaults, returning the logger to use.
func (cfg *Config) withDefaults() (*slog.Logger, error) {
	if cfg.Dial == nil {
		return nil, errors.New("forward: a dial function is required")
	}
	if len(cfg.Rules) == 0 {
		return nil, errors.New("forward: no rules")
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.ProbeInterval == 0 {
		cfg.ProbeInterval = DefaultProbeInterval
	}
	if cfg.Logger == nil {
		return slog.New(slog.DiscardHandler), nil
	}
	return cfg.Logger, nil
}

// Start validates cfg, listens for every rule and starts forwarding. A
// half-built start is undone: either every rule listens or none does.
func Start(cfg Config) (_ *Forwarder, err error) {
	log, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	type plan struct {
		rule  Rule
		binds []bind
	}
	plans := make([]plan, len(cfg.Rules))
	for i, r := range cfg.Rules {
		binds, err := listenAddrs(r.Listen, cfg.AllowNonLoopback)
		if err != nil {
			return nil, fmt.Errorf("forward: rule %s: %w", r, err)
		}
		if _, _, err := net.SplitHostPort(r.Target); err != nil {
			return nil, fmt.Errorf("forward: rule %s: target: %w", r, err)
		}
		plans[i] = plan{r, binds}
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &Forwarder{cfg: cfg, log: log, ctx: ctx, cancel: cancel, conns: make(map[net.Conn]connInfo)}
	defer func() {
		if err != nil {
			cancel()
			for _, ln := range f.lns {
				ln.Close()
			}
		}
	}()
	for i, p := range plans {
		fw := Forward{Rule: p.rule}
		port := p.binds[0].port
		var lns []net.Listener
		for _, b := range p.binds {
			ln, err := net.Listen("tcp", net.JoinHostPort(b.host, port))
			if err != nil {
				if b.optional {
					log.Debug("forward: optional listener not started", "addr", b.host, "err", err)
					continue
				}
				return nil, fmt.Errorf("forward: rule %s: listen: %w", p.rule, err)
			}
			f.lns = append(f.lns, ln)
			lns = append(lns, ln)
			fw.Addrs = append(fw.Addrs, ln.Addr())
			// Every address of one rule shares its port, also when port 0
			// picked one.
			port = strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
		}
		f.forwards = append(f.forwards, fw)
		for _, ln := range lns {
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				f.accept(ln, i, p.rule)
			}()
		}
		if cfg.ProbeInterval > 0 {
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				f.probe(i, p.rule)
			}()
		}
	}
	return f, nil
}

// bind is one local address a rule listens on.
type bind struct {
	host     string
	port     string
	optional bool // may fail (::1 on a host without IPv6)
}

// listenAddrs says where a rule with listen address addr listens, refusing
// anything but loopback unless allowed.
func listenAddrs(addr string, allowNonLoopback bool) ([]bind, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("listen address: %w", err)
	}
	if err := checkPort(port); err != nil {
		return nil, fmt.Errorf("listen address: %w", err)
	}
	if strings.EqualFold(host, "localhost") {
		return []bind{{"127.0.0.1", port, false}, {"::1", port, true}}, nil
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.Unmap().IsLoopback() {
		return []bind{{host, port, false}}, nil
	}
	if !allowNonLoopback {
		where := host
		if where == "" {
			where = "every interface"
		}
		return nil, fmt.Errorf("%w: %s (use localhost or a loopback IP; forcing another address lets anyone who reaches it use the GPU host as this node)", ErrNotLoopback, where)
	}
	return []bind{{host, port, false}}, nil
}

// Forwards returns the running forwards, in the order of Config.Rules.
func (f *Forwarder) Forwards() []Forward { return f.forwards }

// Addr returns the first local address of the i'th rule.
func (f *Forwarder) Addr(i int) net.Addr { return f.forwards[i].Addrs[0] }

func (f *Forwarder) accept(ln net.Listener, rule int, r Rule) {
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if f.isClosed() || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait a little, as
			// net/http does, instead of spinning.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			f.log.Warn("forward: accept", "listen", ln.Addr(), "err", err, "retry_in", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-f.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		backoff = 0
		if !f.track(c, connInfo{rule: rule, local: true}) {
			c.Close()
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer f.untrack(c)
			f.handle(c, rule, r)
		}()
	}
}

// handle carries one local connection into the overlay.
func (f *Forwarder) handle(c net.Conn, rule int, r Rule) {
	ctx, cancel := context.WithTimeout(f.ctx, f.cfg.DialTimeout)
	oc, err := f.cfg.Dial(ctx, "tcp", r.Target)
	cancel()
	if err != nil {
		f.log.Warn("forward: dial into the overlay failed; resetting the local connection", "target", r.Target, "from", c.RemoteAddr(), "err", err)
		reset(c)
		return
	}
	if !f.track(oc, connInfo{rule: rule}) {
		oc.Close()
		c.Close()
		return
	}
	defer f.untrack(oc)
	f.log.Debug("forward: connected", "from", c.RemoteAddr(), "target", r.Target)
	splice(c, oc)
}

// reset closes c with a TCP RST, so the peer's client fails at once.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// splice copies both ways until both directions end, passing a half-close
// on where the connection supports it, then closes both.
func splice(a, b net.Conn) {
	done := make(chan error, 2)
	go func() { done <- pipe(b, a) }()
	go func() { done <- pipe(a, b) }()
	if err := <-done; err != nil {
		// One side failed: end the other direction too.
		a.Close()
		b.Close()
	}
	<-done
	a.Close()
	b.Close()
}

type closeWriter interface{ CloseWrite() error }

// copyBufferSize is the splice buffer: larger than io.Copy's 32 KiB so a
// bulk upload crosses into the overlay in fewer writes.
const copyBufferSize = 256 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, copyBufferSize); return &b }}

// pipe copies src to dst, then half-closes dst (or closes it). It returns
// nil when src ended cleanly.
func pipe(dst, src net.Conn) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	// Hide ReaderFrom/WriterTo so the pooled buffer is used.
	_, err := io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, *bp)
	if err != nil {
		return err
	}
	if cw, ok := dst.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return dst.Close()
}

// connInfo says which rule a tracked connection belongs to, and on which side.
type connInfo struct {
	rule  int
	local bool // accepted on loopback, rather than dialed into the overlay
}

func (f *Forwarder) track(c net.Conn, info connInfo) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.conns[c] = info
	return true
}

// open reports how many local connections rule has open.
func (f *Forwarder) open(rule int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, info := range f.conns {
		if info.rule == rule && info.local {
			n++
		}
	}
	return n
}

// probe checks, while rule has open connections, that its host still
// accepts new ones, and resets the open ones when it does not.
func (f *Forwarder) probe(rule int, r Rule) {
	t := time.NewTicker(f.cfg.ProbeInterval)
	defer t.Stop()
	for {
		select {
		case <-f.ctx.Done():
			return
		case <-t.C:
		}
		if f.open(rule) == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(f.ctx, f.cfg.DialTimeout)
		c, err := f.cfg.Dial(ctx, "tcp", r.Target)
		cancel()
		if err == nil {
			c.Close()
			continue
		}
		if f.ctx.Err() != nil {
			return
		}
		n := f.resetRule(rule)
		f.log.Warn("forward: host stopped answering; reset its open connections", "target", r.Target, "connections", n, "err", err)
	}
}

// resetRule ends every open connection of rule, resetting the local ones,
// and returns how many local ones there were.
func (f *Forwarder) resetRule(rule int) int {
	f.mu.Lock()
	var local, remote []net.Conn
	for c, info := range f.conns {
		switch {
		case info.rule != rule:
		case info.local:
			local = append(local, c)
		default:
			remote = append(remote, c)
		}
	}
	f.mu.Unlock()
	for _, c := range local {
		reset(c)
	}
	for _, c := range remote {
		c.Close()
	}
	return len(local)
}

func (f *Forwarder) untrack(c net.Conn) {
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
}

func (f *Forwarder) isClosed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}

// Close stops listening, ends every forwarded connection and waits for all
// of the forwarder's goroutines. A second Close returns net.ErrClosed.
func (f *Forwarder) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return net.ErrClosed
	}
	f.closed = true
	conns := make([]net.Conn, 0, len(f.conns))
	for c := range f.conns {
		conns = append(conns, c)
	}
	f.mu.Unlock()
	f.cancel()
	var errs []error
	for _, ln := range f.lns {
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	for _, c := range conns {
		c.Close()
	}
	f.wg.Wait()
	return errors.Join(errs...)
}
