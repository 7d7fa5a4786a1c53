package gpusvc

import (
	"sync"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpumesh/gpumesh/policy"
)

// quotas enforces the policy's per-identity limits on calls: how many may
// run at once and how fast they may come. One caller over its quota is
// refused; nobody else notices.
type quotas struct {
	mu sync.Mutex
	m  map[string]*quota // by identity key; guarded by mu
}

// quota is one identity's state. Its fields are guarded by quotas.mu.
type quota struct {
	inflight int
	limit    rate.Limit
	burst    int
	lim      *rate.Limiter // nil when no rate is set
	memHeld  int64         // bytes of buffers held (sessions)
}

func newQuotas() *quotas { return &quotas{m: make(map[string]*quota)} }

func (q *quotas) get(key string) *quota {
	u := q.m[key]
	if u == nil {
		u = &quota{}
		q.m[key] = u
	}
	return u
}

// acquire takes a call slot for key under the decision's limits, or says
// which limit refuses it. The limits in force are those of the latest
// decision, so a policy reload applies to the next call.
func (q *quotas) acquire(key, who string, d policy.Decision) (release func(), err error) {
	l := d.Limits
	q.mu.Lock()
	defer q.mu.Unlock()
	u := q.get(key)
	if l.MaxConcurrent > 0 && u.inflight >= l.MaxConcurrent {
		return nil, status.Errorf(codes.ResourceExhausted,
			"gpumesh: %s is over its quota: max_concurrent = %d calls already in flight (rule %q)", who, l.MaxConcurrent, d.Rule)
	}
	if l.Rate > 0 {
		burst := max(l.Burst, 1)
		if u.lim == nil || u.limit != rate.Limit(l.Rate) || u.burst != burst {
			u.limit, u.burst = rate.Limit(l.Rate), burst
			if u.lim == nil {
				u.lim = rate.NewLimiter(u.limit, burst)
			} else {
				u.lim.SetLimit(u.limit)
				u.lim.SetBurst(burst)
			}
		}
		if !u.lim.Allow() {
			return nil, status.Errorf(codes.ResourceExhausted,
				"gpumesh: %s is over its quota: rate = %g calls/s, burst %d (rule %q)", who, l.Rate, burst, d.Rule)
		}
	} else {
		u.lim = nil
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

// reserveMemory counts n more bytes held by key against max (0: no limit).
func (q *quotas) reserveMemory(key, who string, n, max int64, rule string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	u := q.get(key)
	if max > 0 && u.memHeld+n > max {
		return status.Errorf(codes.ResourceExhausted,
			"gpumesh: %s is over its quota: max_memory = %d bytes, %d held, %d more asked (rule %q)", who, max, u.memHeld, n, rule)
	}
	u.memHeld += n
	return nil
}

// releaseMemory returns n bytes held by key.
func (q *quotas) releaseMemory(key string, n int64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	u := q.get(key)
	u.memHeld = max(u.memHeld-n, 0)
}
