package pool

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/overlay"
)

// Placement weights. A host's estimate is the time a new call placed there
// would take to finish: the round trip, plus one time-per-call for each
// call ahead of it and for itself, plus a share of one for the GPU's
// utilisation by others, plus a cost for a relayed path (a relay adds
// latency under load and shares its bandwidth).
const (
	// defaultService is a host's time per call before it has run one for
	// this pool.
	defaultService = 5 * time.Millisecond
	// relayCost is added to a relayed host's estimate.
	relayCost = 20 * time.Millisecond
)

// Candidate is one host as placement weighs it.
type Candidate struct {
	Host  string `json:"host"`
	State State  `json:"state"`
	// Allowed is the host's policy's answer for this caller and work;
	// Reason is its reason, or why the host was not asked.
	Allowed bool   `json:"allowed"`
	Rule    string `json:"rule,omitempty"`
	Reason  string `json:"reason,omitempty"`
	// AtLimit: this pool's calls there already reach the caller's
	// max_concurrent on that host; it is used only when no other is free.
	AtLimit bool          `json:"at_limit,omitempty"`
	Path    overlay.Path  `json:"path"`
	RTT     time.Duration `json:"rtt"`
	// Ours is this pool's calls, sessions and connections on the host;
	// Others is other callers' calls there, as the host reports them.
	Ours   int `json:"ours"`
	Others int `json:"others"`
	// Utilization is the GPU's (the busiest one's, for the default GPU).
	Utilization uint32 `json:"utilization_percent"`
	MemoryFree  uint64 `json:"memory_free,omitempty"`
	// Service is the host's time per call: the backend's compute time,
	// averaged over this pool's calls, or defaultService.
	Service  time.Duration `json:"service"`
	Estimate time.Duration `json:"estimate"`
}

// eligible reports whether work may be placed on c at all: a suspect host
// only when no ready one can take it (see rank).
func (c Candidate) eligible() bool {
	return (c.State == StateReady || c.State == StateSuspect) && c.Allowed
}

// estimate is the time a call placed on c now would take to finish.
func (c Candidate) estimate() time.Duration {
	svc := c.Service
	if svc <= 0 {
		svc = defaultService
	}
	est := c.RTT + time.Duration(c.Ours+c.Others+1)*svc + svc*time.Duration(min(c.Utilization, 100))/100
	if c.Path == overlay.PathRelayed {
		est += relayCost
	}
	return est
}

// why says in one line how c was weighed.
func (c Candidate) why() string {
	switch {
	case !c.eligible() && c.State != StateReady && c.Reason == "":
		return c.State.String()
	case !c.eligible() && c.State != StateReady:
		return c.State.String() + ": " + c.Reason
	case !c.Allowed:
		return "denied: " + c.Reason
	}
	s := fmt.Sprintf("estimate %v = round trip %v + (%d ours + %d others ahead + 1) × %v per call",
		c.Estimate.Round(10*time.Microsecond), c.RTT.Round(10*time.Microsecond), c.Ours, c.Others, c.Service.Round(10*time.Microsecond))
	if c.Utilization > 0 {
		s += fmt.Sprintf(" + GPU %d%% busy", c.Utilization)
	}
	if c.Path == overlay.PathRelayed {
		s += fmt.Sprintf(" + %v relayed path", relayCost)
	} else {
		s += ", " + c.Path.String() + " path"
	}
	if c.AtLimit {
		s += "; at this node's max_concurrent there"
	}
	if c.State == StateSuspect {
		s += "; suspect (used only while no ready host can take the work)"
	}
	return s
}

// rank sorts candidates best first: ready hosts under their limit by
// estimate (then more free memory, then name), then those at their limit,
// then suspect hosts (a host whose probe was slow on a loaded machine is
// better than no host), then the rest by name.
func rank(cs []Candidate) {
	for i := range cs {
		cs[i].Estimate = cs[i].estimate()
	}
	tier := func(c Candidate) int {
		switch {
		case !c.eligible():
			return 3
		case c.State == StateSuspect:
			return 2
		case c.AtLimit:
			return 1
		}
		return 0
	}
	slices.SortStableFunc(cs, func(a, b Candidate) int {
		if t := cmp.Compare(tier(a), tier(b)); t != 0 {
			return t
		}
		if tier(a) < 3 {
			if e := cmp.Compare(a.Estimate, b.Estimate); e != 0 {
				return e
			}
			if m := cmp.Compare(b.MemoryFree, a.MemoryFree); m != 0 {
				return m
			}
		}
		return strings.Compare(a.Host, b.Host)
	})
}

// Placement is what placing one piece of work decided and why.
type Placement struct {
	// Work is what was placed: a kernel's name, "a session", "a connection".
	Work string `json:"work"`
	// Pick is the chosen host; empty when none can take the work.
	Pick string `json:"pick,omitempty"`
	// Why says why Pick, or why no host.
	Why string `json:"why"`
	// Candidates are every member, best first.
	Candidates []Candidate `json:"candidates"`
}

// work is something to place.
type work struct {
	what    string   // for messages
	kernels []string // the host's policy must allow each
	any     bool     // allowing any one of kernels (all built-ins when empty) suffices
	gpu     string
	exclude []string // hosts already tried
}

// answer is a host's policy answer for a piece of work.
type answer struct {
	allow  bool
	rule   string
	reason string
	limits Limits
	err    error // the host could not be asked
}

// answer is the cached answer as placement reads it.
func (e *explainEntry) answer() answer {
	return answer{allow: e.allow, rule: e.rule, reason: e.reason, limits: e.limits}
}

// candidates weighs every member for w, asking the policies of the ready
// ones (see answers).
func (p *Pool) candidates(ctx context.Context, w work) ([]Candidate, map[string]*host) {
	p.mu.Lock()
	hs := make([]*host, 0, len(p.hosts))
	byName := make(map[string]*host, len(p.hosts))
	for _, h := range p.hosts {
		if !slices.Contains(w.exclude, h.name) {
			hs = append(hs, h)
			byName[h.name] = h
		}
	}
	p.mu.Unlock()
	answers := p.answers(ctx, hs, w)
	cs := make([]Candidate, len(hs))
	for i, h := range hs {
		cs[i] = h.candidate(w, answers[i])
	}
	return cs, byName
}

// answers says what the policies of hs say of w: those of the ready
// hosts, and the cached answers of the suspect ones (a suspect host may
// not answer); the others are not asked.
//
// The caller's goroutine does the asking, and starts none of its own: a
// question the cache does not answer is put to its host by one goroutine
// of the pool's (question), which every caller needing that answer
// meanwhile waits for. However many calls are placed at once, the
// goroutines asking are at most one per question outstanding (host,
// kernel and GPU). The hosts are asked in parallel: each host's first
// question is put before any answer is waited for; when w names several
// kernels, a host's next question follows its answer to the last, as
// before (w.any stops at the first kernel allowed, otherwise at the first
// denied).
func (p *Pool) answers(ctx context.Context, hs []*host, w work) []answer {
	out := make([]answer, len(hs))
	kernels := w.kernels
	if w.any && len(kernels) == 0 {
		kernels = kernel.Names()
	}
	// asking is one host's questions so far.
	type asking struct {
		i      int  // the host, in hs
		cached bool // suspect: its cached answers only
		next   int  // the kernel asked now, in kernels
		e      *explainEntry
		err    error
		first  answer // the answer given when no later one decides
	}
	var open []*asking
	for i, h := range hs {
		h.mu.Lock()
		st := h.state
		h.mu.Unlock()
		switch {
		case st != StateReady && st != StateSuspect:
		case len(kernels) == 0:
			// A session with no kernels named: the host decides when it opens.
			out[i] = answer{allow: true, reason: "no kernel named; the host decides at OpenSession"}
		default:
			open = append(open, &asking{i: i, cached: st == StateSuspect})
		}
	}
	for len(open) > 0 {
		for _, a := range open {
			a.e, a.err = hs[a.i].question(kernels[a.next], w.gpu, a.cached)
		}
		still := open[:0]
		for _, a := range open {
			if a.err == nil {
				a.err = p.await(ctx, a.e)
			}
			if a.err != nil {
				out[a.i] = answer{err: a.err, reason: a.err.Error()}
				continue
			}
			got := a.e.answer()
			if a.next == 0 {
				a.first = got
			}
			a.next++
			switch {
			case got.allow == w.any:
				// Any kernel: an allow decides. Every kernel: a denial does.
				out[a.i] = got
			case a.next == len(kernels):
				out[a.i] = a.first
			default:
				still = append(still, a)
			}
		}
		open = still
	}
	return out
}

// await waits for e's answer, or for ctx to end.
func (p *Pool) await(ctx context.Context, e *explainEntry) error {
	select {
	case <-e.done:
		return e.err
	default:
	}
	if p.cfg.hooks.waiting != nil {
		p.cfg.hooks.waiting()
	}
	select {
	case <-e.done:
		return e.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// candidate is h as placement sees it now, given its policy's answer.
func (h *host) candidate(w work, a answer) Candidate {
	h.mu.Lock()
	defer h.mu.Unlock()
	c := Candidate{
		Host: h.name, State: h.state, Allowed: a.allow && a.err == nil, Rule: a.rule, Reason: a.reason,
		Path: h.peer.Path, RTT: h.rtt, Ours: h.outstanding + h.sessions + len(h.conns),
		Utilization: h.load.Utilization(w.gpu), Service: h.service,
	}
	if c.Service <= 0 {
		c.Service = defaultService
	}
	if h.load.Reported {
		c.Others = max(0, h.load.Queue()-h.atProbe)
	}
	c.MemoryFree, _ = h.load.MemoryFree(w.gpu)
	if m := a.limits.MaxConcurrent; m > 0 && h.outstanding >= m {
		c.AtLimit = true
	}
	if h.state != StateReady && h.err != nil {
		c.Reason = h.err.Error()
	}
	return c
}

// lease is work placed on a host: counted there until released.
type lease struct {
	h      *host
	client *gpusvc.Client
	lost   chan struct{} // closed if the host is lost
	gen    uint64
}

// acquire counts one more piece of this pool's work on h, if h is still
// ready (or suspect: rank put it after every ready host).
func (h *host) acquire() (lease, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if (h.state != StateReady && h.state != StateSuspect) || h.client == nil || h.removed {
		return lease{}, false
	}
	h.outstanding++
	h.placed++
	return lease{h: h, client: h.client, lost: h.lost, gen: h.gen}, true
}

// release ends the lease; service, when positive, is the backend's time
// for the call.
func (l lease) release(service time.Duration) {
	l.h.mu.Lock()
	defer l.h.mu.Unlock()
	l.h.outstanding--
	if service > 0 && l.gen == l.h.gen {
		l.h.service = average(l.h.service, service)
	}
}

// place chooses a host for w and leases it.
func (p *Pool) place(ctx context.Context, w work) (lease, error) {
	if p.isClosed() {
		return lease{}, fmt.Errorf("pool %s: %w", p.target, errClosed)
	}
	// Work that comes before the first probes have answered waits for them.
	select {
	case <-p.first:
	case <-ctx.Done():
		return lease{}, fmt.Errorf("pool %s: waiting for the first probes: %w", p.target, ctx.Err())
	}
	cs, byName := p.candidates(ctx, w)
	p.placeMu.Lock()
	defer p.placeMu.Unlock()
	// Recount the work on each host: others placed some while the
	// policies were asked.
	for i := range cs {
		h := byName[cs[i].Host]
		h.mu.Lock()
		cs[i].Ours = h.outstanding + h.sessions + len(h.conns)
		h.mu.Unlock()
	}
	rank(cs)
	for _, c := range cs {
		if !c.eligible() {
			break
		}
		if l, ok := byName[c.Host].acquire(); ok {
			return l, nil
		}
	}
	reasons := make([]string, 0, len(cs)+len(w.exclude))
	for _, c := range cs {
		reasons = append(reasons, c.Host+": "+c.why())
	}
	for _, x := range w.exclude {
		reasons = append(reasons, x+": tried already")
	}
	return lease{}, p.noHost(w.what, reasons...)
}

// Explain says which host the pool would pick now for kernelName (on
// Config.GPU) and why, without placing anything.
func (p *Pool) Explain(ctx context.Context, kernelName string) Placement {
	w := work{what: kernelName, kernels: []string{kernelName}, gpu: p.cfg.GPU}
	cs, _ := p.candidates(ctx, w)
	rank(cs)
	pl := Placement{Work: kernelName, Candidates: cs}
	switch {
	case len(cs) == 0:
		pl.Why = p.noHost(kernelName).Error()
	case !cs[0].eligible():
		pl.Why = "no host is up and allows " + kernelName
	default:
		pl.Pick = cs[0].Host
		pl.Why = "least estimated time to finish: " + cs[0].why()
		if len(cs) > 1 && cs[1].eligible() {
			pl.Why += fmt.Sprintf("; next %s at %v", cs[1].Host, cs[1].Estimate.Round(10*time.Microsecond))
		}
	}
	return pl
}
