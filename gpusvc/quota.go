package gpusvc

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpumesh/gpumesh/policy"
)

// quotas enforces the policy's limits and the host's memory budget.
//
// Call limits (max_concurrent, rate) hold per identity and rule: each rule
// that decides a caller's calls has its own slots and token bucket for
// that caller, so calls decided by different rules, in whatever order they
// come, never reset or share each other's limits. A policy reload that
// changes a rule's limits applies them to the next call.
//
// Memory: what an identity holds in resident buffers (each with
// bufferOverhead) counts against the max_memory of the rule that decides
// each allocation, and against the host's budget, which kernel outputs in
// flight count against too. One caller over its quota is refused; nobody
// else notices, unless the host itself is full.
type quotas struct {
	budget int64 // host-wide bytes; fixed

	mu    sync.Mutex
	calls map[ruleKey]*callQuota // guarded by mu
	held  map[string]int64       // bytes held per identity key; guarded by mu
	used  int64                  // bytes held host-wide; guarded by mu
	sweep int                    // acquires since the last sweep; guarded by mu
}

type ruleKey struct{ who, rule string }

// callQuota is one identity's calls under one rule. Guarded by quotas.mu.
type callQuota struct {
	inflight int
	limit    rate.Limit
	burst    int
	lim      *rate.Limiter // nil when the rule sets no rate
	last     time.Time
}

func newQuotas(budget int64) *quotas {
	return &quotas{budget: budget, calls: make(map[ruleKey]*callQuota), held: make(map[string]int64)}
}

// sweepEvery acquires, entries idle for sweepIdle with full buckets go.
const (
	sweepEvery = 4096
	sweepIdle  = 10 * time.Minute
)

// acquire takes a call slot for who under the decision's rule, or says
// which limit refuses it.
func (q *quotas) acquire(who *caller, d policy.Decision) (release func(), err error) {
	l := d.Limits
	now := time.Now()
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.sweep++; q.sweep >= sweepEvery {
		q.sweepLocked(now)
	}
	k := ruleKey{who.key, d.Rule}
	u := q.calls[k]
	if u == nil {
		u = &callQuota{}
		q.calls[k] = u
	}
	u.last = now
	if l.MaxConcurrent > 0 && u.inflight >= l.MaxConcurrent {
		return nil, status.Errorf(codes.ResourceExhausted,
			"gpumesh: %s is over its quota: max_concurrent = %d calls already in flight (rule %q)", who.name, l.MaxConcurrent, d.Rule)
	}
	if l.Rate > 0 {
		burst := max(l.Burst, 1)
		switch {
		case u.lim == nil:
			u.limit, u.burst = rate.Limit(l.Rate), burst
			u.lim = rate.NewLimiter(u.limit, burst)
		case u.limit != rate.Limit(l.Rate) || u.burst != burst:
			u.limit, u.burst = rate.Limit(l.Rate), burst
			u.lim.SetLimitAt(now, u.limit)
			u.lim.SetBurstAt(now, burst)
		}
		if !u.lim.AllowN(now, 1) {
			return nil, status.Errorf(codes.ResourceExhausted,
				"gpumesh: %s is over its quota: rate = %g calls/s, burst %d (rule %q)", who.name, l.Rate, burst, d.Rule)
		}
	} else {
		u.lim = nil // the rule dropped its rate
	}
	u.inflight++
	var once sync.Once
	return func() {
		once.Do(func() {
			q.mu.Lock()
			u.inflight--
			q.mu.Unlock()
		})
	}, nil
}

// sweepLocked forgets call quotas nobody used for sweepIdle whose buckets
// are full again: forgetting them changes nothing.
func (q *quotas) sweepLocked(now time.Time) {
	q.sweep = 0
	for k, u := range q.calls {
		if u.inflight == 0 && now.Sub(u.last) > sweepIdle && (u.lim == nil || u.lim.TokensAt(now) >= float64(u.burst)) {
			delete(q.calls, k)
		}
	}
}

// reserve counts n more bytes held by who against max (the deciding
// rule's max_memory; 0: none) and the host's budget.
func (q *quotas) reserve(who *caller, n, max int64, rule string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	held := q.held[who.key]
	if max > 0 && held+n > max {
		return status.Errorf(codes.ResourceExhausted,
			"gpumesh: %s is over its quota: max_memory = %d bytes, %d held, %d more asked (rule %q)", who.name, max, held, n, rule)
	}
	if err := q.takeLocked(n); err != nil {
		return err
	}
	q.held[who.key] = held + n
	return nil
}

// release returns n bytes held by the identity key.
func (q *quotas) release(key string, n int64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if h := q.held[key] - n; h > 0 {
		q.held[key] = h
	} else {
		delete(q.held, key)
	}
	q.used = max(q.used-n, 0)
}

// take reserves n bytes of the host's budget for something transient (a
// kernel output, a queued request); give returns them.
func (q *quotas) take(n int64) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.takeLocked(n)
}

func (q *quotas) takeLocked(n int64) error {
	if n < 0 || n > q.budget-q.used {
		return status.Errorf(codes.ResourceExhausted,
			"gpumesh: the host is full: %d bytes asked, %d of its %d-byte budget (serve --max-memory) in use", n, q.used, q.budget)
	}
	q.used += n
	return nil
}

func (q *quotas) give(n int64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.used = max(q.used-n, 0)
}

// memory reports the bytes held host-wide and the budget.
func (q *quotas) memory() (held, budget int64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.used, q.budget
}
