package pool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpumesh/gpumesh/gpusvc"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/overlay"
)

// State is where a host stands in a pool.
type State int

const (
	// StateProbing: the peer was found and has not answered yet.
	StateProbing State = iota
	// StateReady: it answered its last probe; calls are placed on it.
	StateReady
	// StateSuspect: a call or probe failed; no new calls are placed on it
	// until a probe answers again, and it is lost if none does within
	// Config.DownAfter of its last answer.
	StateSuspect
	// StateDown: it does not serve the endpoint (refused, or no answer),
	// or it was lost; it is probed again every Config.RetryInterval.
	StateDown
	// StateMissing: a name the target lists that no peer has.
	StateMissing
)

func (s State) String() string {
	switch s {
	case StateProbing:
		return "probing"
	case StateReady:
		return "ready"
	case StateSuspect:
		return "suspect"
	case StateDown:
		return "down"
	case StateMissing:
		return "missing"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// MarshalText writes the state as its name, for JSON.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads a state's name.
func (s *State) UnmarshalText(b []byte) error {
	for x := StateProbing; x <= StateMissing; x++ {
		if x.String() == string(b) {
			*s = x
			return nil
		}
	}
	return fmt.Errorf("pool: unknown host state %q", b)
}

// ErrHostLost says a host was lost: it left the overlay or stopped
// answering for Config.DownAfter. The calls of a session on it fail with
// an error wrapping ErrHostLost that names the host; the session does not
// move.
var ErrHostLost = errors.New("pool: host lost")

// Limits are what a host's policy allows this caller, as Explain says.
type Limits struct {
	MaxConcurrent   int           `json:"max_concurrent,omitempty"`
	MaxMemory       int64         `json:"max_memory,omitempty"`
	Rate            float64       `json:"rate,omitempty"`
	Burst           int           `json:"burst,omitempty"`
	MaxRequestBytes int64         `json:"max_request_bytes,omitempty"`
	IdleTimeout     time.Duration `json:"idle_timeout,omitempty"`
}

// host is one member of a pool. Its name and pool are immutable; the rest
// is guarded by mu. Lock order: Pool.mu, then host.mu.
type host struct {
	name string
	p    *Pool

	mu          sync.Mutex
	peer        overlay.Peer
	addr        string // ip:port of its endpoint
	state       State
	err         error     // why it is not ready
	since       time.Time // when state last changed
	client      *gpusvc.Client
	gen         uint64        // counts the clients installed; a session keeps the one it opened on
	lost        chan struct{} // closed when the current client is lost
	devices     *pb.DevicesResponse
	load        Load
	lastOK      time.Time
	nextProbe   time.Time
	probing     bool
	fails       int           // probes failed in a row
	removed     bool          // no longer a member
	rtt         time.Duration // the least of the recent probes' round trips
	rtts        [8]time.Duration
	nrtt        int           // probes recorded in rtts
	service     time.Duration // moving average of the backend's time per call
	outstanding int           // this pool's calls in flight here
	atProbe     int           // outstanding when load was sampled
	sessions    int           // this pool's sessions open here
	placed      uint64        // calls and connections placed here
	conns       map[net.Conn]struct{}
	// policy is the version of the policy the host last reported in force
	// (Devices' policy_version); explain holds only answers given under
	// it, and is emptied when a probe sees another.
	policy  string
	explain map[explainKey]*explainEntry
}

func newHost(p *Pool, name string, peer overlay.Peer, addr string, now time.Time) *host {
	return &host{
		name: name, p: p, peer: peer, addr: addr, state: StateProbing, since: now, nextProbe: now,
		conns: make(map[net.Conn]struct{}), explain: make(map[explainKey]*explainEntry),
	}
}

// setStateLocked changes the state; the caller notifies the pool after
// unlocking.
func (h *host) setStateLocked(s State, err error, now time.Time) bool {
	changed := h.state != s
	if changed {
		h.since = now
	}
	h.state, h.err = s, err
	return changed
}

// due reports whether a probe should start now, and marks it started.
func (h *host) due(now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.probing || h.removed || now.Before(h.nextProbe) {
		return false
	}
	h.probing = true
	return true
}

// probe asks the host for its devices and load, and updates its state: a
// host without a client (new, or down) gets a fresh one, kept only if it
// answers; a host that had answered becomes suspect on a failure and is
// lost once it has not answered for DownAfter.
func (h *host) probe(ctx context.Context) {
	cfg := &h.p.cfg
	h.mu.Lock()
	c, addr := h.client, h.addr
	h.mu.Unlock()
	fresh := c == nil
	if fresh {
		var err error
		if c, err = gpusvc.NewClient(addr, h.p.dial, cfg.GRPCOptions...); err != nil {
			h.probed(nil, nil, 0, fmt.Errorf("client for %s: %w", addr, err))
			return
		}
	}
	pctx, cancel := context.WithTimeout(ctx, cfg.ProbeTimeout)
	t0 := time.Now()
	res, err := c.Devices(pctx)
	rtt := time.Since(t0)
	cancel()
	if err != nil {
		err = probeError(err, cfg.ProbeTimeout)
	}
	if !h.probed(c, res, rtt, err) && fresh {
		c.Close()
	}
}

// probed records a probe's outcome and reports whether c, a fresh client,
// was installed.
func (h *host) probed(c *gpusvc.Client, res *pb.DevicesResponse, rtt time.Duration, err error) (installed bool) {
	cfg := &h.p.cfg
	now := time.Now()
	var lostClient *gpusvc.Client
	var conns []net.Conn
	var reloaded string // the policy version the answers cached were given under, when it changed
	h.mu.Lock()
	h.probing = false
	changed := false
	switch {
	case h.removed:
	case err == nil:
		h.fails = 0
		if h.client == nil {
			h.client, h.lost, installed = c, make(chan struct{}), true
			h.gen++
		}
		if v := res.GetPolicyVersion(); v != h.policy {
			// Another policy is in force there: what the old one
			// answered may no longer hold. Questions being asked stay
			// with those waiting for them, and are not kept (answered).
			reloaded, h.policy = h.policy, v
			clear(h.explain)
		}
		h.devices, h.load, h.atProbe, h.lastOK = res, LoadOf(res), h.outstanding, now
		if !installed {
			// A fresh client's first call also set up its connection.
			h.recordRTT(rtt)
		}
		h.nextProbe = now.Add(cfg.RefreshInterval)
		changed = h.setStateLocked(StateReady, nil, now)
	case h.client == nil || h.client != c:
		// Never answered, or down: try again later, less often the longer
		// it stays so (up to 4 × RetryInterval: "*" may list many peers
		// that serve nothing).
		h.fails++
		h.nextProbe = now.Add(cfg.RetryInterval << min(h.fails-1, 2))
		changed = h.setStateLocked(StateDown, err, now)
	case now.Sub(h.lastOK) >= cfg.DownAfter:
		lostClient, conns = h.loseLocked()
		h.nextProbe = now.Add(cfg.RetryInterval)
		changed = h.setStateLocked(StateDown, fmt.Errorf("no answer for %v: %w", now.Sub(h.lastOK).Round(time.Millisecond), err), now)
	default:
		h.nextProbe = now.Add(cfg.RefreshInterval)
		changed = h.setStateLocked(StateSuspect, err, now)
	}
	policyNow := h.policy
	h.mu.Unlock()
	h.p.closeLost(lostClient, conns)
	if reloaded != "" {
		h.p.log.Info("pool: host's policy changed, its answers forgotten", "pool", h.p.target.String(), "host", h.name,
			"was", reloaded, "now", policyNow)
	}
	if changed {
		h.p.logStateChange(h)
	}
	if changed || reloaded != "" {
		h.p.notify()
	}
	return installed
}

// loseLocked takes the host's client and forwarded connections away (the
// caller closes them, unlocked), ending the sessions and calls on it.
func (h *host) loseLocked() (*gpusvc.Client, []net.Conn) {
	c := h.client
	if c != nil {
		close(h.lost)
	}
	h.client, h.lost = nil, nil
	conns := make([]net.Conn, 0, len(h.conns))
	for cn := range h.conns {
		conns = append(conns, cn)
	}
	clear(h.conns)
	clear(h.explain)
	h.sessions = 0
	return c, conns
}

// suspect stops new calls going to the host after a failure, and asks for
// a probe at once.
func (h *host) suspect(err error) {
	h.mu.Lock()
	changed := false
	if h.state == StateReady {
		changed = h.setStateLocked(StateSuspect, err, time.Now())
		h.nextProbe = time.Now()
	}
	h.mu.Unlock()
	if changed {
		h.p.logStateChange(h)
		h.p.kickProbe()
		h.p.notify()
	}
}

// remove takes the host out of the pool (its peer left); the caller
// closes what it returns.
func (h *host) remove(why error) (*gpusvc.Client, []net.Conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.removed = true
	c, conns := h.loseLocked()
	h.setStateLocked(StateDown, why, time.Now())
	h.since = time.Now()
	return c, conns
}

// recordRTT keeps a probe's round trip; the host's RTT is the least of
// the last few, which the queueing delays of a loaded machine or network
// only ever add to.
func (h *host) recordRTT(d time.Duration) {
	h.rtts[h.nrtt%len(h.rtts)] = d
	h.nrtt++
	h.rtt = d
	for _, x := range h.rtts[:min(h.nrtt, len(h.rtts))] {
		h.rtt = min(h.rtt, x)
	}
}

// average is a moving average giving the new sample a weight of 1/4.
func average(old, sample time.Duration) time.Duration {
	if old == 0 {
		return sample
	}
	return old + (sample-old)/4
}

// probeError says in a few words why a probe failed.
func probeError(err error, timeout time.Duration) error {
	st := status.Convert(err)
	switch st.Code() {
	case codes.DeadlineExceeded:
		return fmt.Errorf("no answer to Devices within %v", timeout)
	case codes.PermissionDenied, codes.Unauthenticated:
		return fmt.Errorf("refuses this node: %s", st.Message())
	}
	if notSent(err) {
		return fmt.Errorf("does not serve the endpoint: %s", st.Message())
	}
	return fmt.Errorf("Devices: %w", err)
}

// explainKey is one question to a host's policy.
type explainKey struct{ kernel, gpu string }

// explainEntry is a host's answer, cached for Config.ExplainTTL while the
// host's policy version stays the one it was given under. Its fields are
// written once, under the host's mu, before done is closed.
type explainEntry struct {
	done   chan struct{}
	at     time.Time
	allow  bool
	rule   string
	reason string
	limits Limits
	err    error // the Explain call failed; such entries are not kept
}

// maxExplainEntries bounds a host's cache of policy answers.
const maxExplainEntries = 256

// question returns the entry that holds, or will hold, the host's policy
// answer for kernel on gpu: the cached one while it is fresh, the one
// being asked, or else (unless cachedOnly) a new one, which a goroutine of
// the pool's asks the host for. It never waits; Pool.await does.
func (h *host) question(kernelName, gpu string, cachedOnly bool) (*explainEntry, error) {
	k := explainKey{kernelName, gpu}
	h.mu.Lock()
	if e := h.explain[k]; e != nil && (!isClosed(e.done) || time.Since(e.at) < h.p.cfg.ExplainTTL) {
		h.mu.Unlock()
		return e, nil
	}
	c := h.client
	if c == nil || cachedOnly {
		h.mu.Unlock()
		return nil, fmt.Errorf("%s is %v, and its policy's answer is not cached", h.name, h.state)
	}
	if len(h.explain) >= maxExplainEntries {
		clear(h.explain)
	}
	e := &explainEntry{done: make(chan struct{})}
	h.explain[k] = e
	h.mu.Unlock()
	if !h.p.goAsk(func(ctx context.Context) { h.ask(ctx, c, k, e) }) {
		h.answered(k, e, nil, fmt.Errorf("explain %s: %w", kernelName, errClosed))
	}
	return e, nil
}

// ask puts one question to the host's policy (Explain) and records the
// answer in e.
func (h *host) ask(ctx context.Context, c *gpusvc.Client, k explainKey, e *explainEntry) {
	if h.p.cfg.hooks.asking != nil {
		h.p.cfg.hooks.asking(h.name)
	}
	ectx, cancel := context.WithTimeout(ctx, h.p.cfg.ProbeTimeout)
	res, err := c.Explain(ectx, k.kernel, k.gpu)
	cancel()
	if err != nil {
		err = fmt.Errorf("explain %s: %w", k.kernel, err)
	}
	h.answered(k, e, res, err)
}

// answered fills e with the host's answer, or its failure, and wakes
// those waiting for it. A failure is not kept, nor an answer given under a
// policy version other than the one the host last reported: an older one
// (a reload overtook the question) is wrong now, a newer one is kept once
// a probe has seen its version in force, which it asks for now.
func (h *host) answered(k explainKey, e *explainEntry, res *pb.ExplainResponse, err error) {
	h.mu.Lock()
	e.at = time.Now()
	stale := err == nil && res.GetPolicyVersion() != h.policy
	if (err != nil || stale) && h.explain[k] == e {
		delete(h.explain, k)
	}
	probe := stale && h.client != nil && !h.removed
	if probe {
		h.nextProbe = e.at
	}
	if err != nil {
		e.err = err
	} else {
		e.allow, e.rule, e.reason = res.GetAllow(), res.GetRule(), res.GetReason()
		if l := res.GetLimits(); l != nil {
			e.limits = Limits{
				MaxConcurrent: int(l.GetMaxConcurrent()), MaxMemory: l.GetMaxMemory(), Rate: l.GetRate(),
				Burst: int(l.GetBurst()), MaxRequestBytes: l.GetMaxRequestBytes(),
				IdleTimeout: time.Duration(l.GetIdleTimeoutMs()) * time.Millisecond,
			}
		}
	}
	close(e.done)
	h.mu.Unlock()
	if probe {
		h.p.kickProbe()
	}
}

// forget drops the cached policy answer for kernel on gpu: the host just
// refused a call the cache said it allows.
func (h *host) forget(kernelName, gpu string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := explainKey{kernelName, gpu}
	if e := h.explain[k]; e != nil {
		select {
		case <-e.done:
			delete(h.explain, k)
		default:
		}
	}
}
