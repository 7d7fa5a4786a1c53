package gpusvc

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/policy"
)

// Admission: what a peer may hold before any of its messages is read.
//
// The handshake identifies the peer and counts its connections; the tap
// handle (gRPC's InTapHandle, run when a stream's headers arrive, before
// its first message is read) asks the policy whether it gives the peer any
// right at all (policy.Admits), refuses it when not, and counts the peer's
// open streams. Refusals are recorded without holding anything: a bounded
// queue drained by one goroutine, and per caller at most refusalRate
// records a second, the others counted in the next record's Suppressed.

// admission counts what each identity holds open.
type admission struct {
	mu         sync.Mutex
	conns      map[string]int // by caller key; guarded by mu
	streams    map[string]int // by caller key; guarded by mu
	totalConns int            // guarded by mu
	total      int            // open streams, every caller; guarded by mu
}

func newAdmission() *admission {
	return &admission{conns: make(map[string]int), streams: make(map[string]int)}
}

// openConn takes one of who's connection slots, or says why not.
func (a *admission) openConn(who *caller, limit int) (release func(), err error) {
	return a.takeConn(who.key, who.name, limit, 1)
}

// openAgentConn takes one of a trusted Kubernetes agent's agent-wide
// connection slots (for all its pods and itself); the connection's own
// slot, taken by openConn, is the one the host's total counts.
func (a *admission) openAgentConn(id overlay.Identity, limit int) (release func(), err error) {
	return a.takeConn("agent:"+quotaKey(id), "Kubernetes agent "+id.String()+" (all its pods)", limit, 0)
}

// takeConn takes one of key's connection slots, adding total to the
// host's count of open connections.
func (a *admission) takeConn(key, name string, limit, total int) (release func(), err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if n := a.conns[key]; n >= limit {
		return nil, status.Errorf(codes.ResourceExhausted, "gpumesh: %s already holds %d connections to this host, its most", name, n)
	}
	a.conns[key]++
	a.totalConns += total
	return func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		a.totalConns -= total
		if a.conns[key]--; a.conns[key] <= 0 {
			delete(a.conns, key)
		}
	}, nil
}

// openStream takes one of who's stream slots, or says why not.
func (a *admission) openStream(who *caller, limit int) (release func(), err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if n := a.streams[who.key]; n >= limit {
		return nil, status.Errorf(codes.ResourceExhausted, "gpumesh: %s already has %d calls and streams open on this host, its most; wait for one to end", who.name, n)
	}
	a.streams[who.key]++
	a.total++
	var once sync.Once
	return func() {
		once.Do(func() {
			a.mu.Lock()
			defer a.mu.Unlock()
			a.total--
			if a.streams[who.key]--; a.streams[who.key] <= 0 {
				delete(a.streams, who.key)
			}
		})
	}, nil
}

// open reports the connections and streams open, every caller.
func (a *admission) open() (conns, streams int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.totalConns, a.total
}

// tapped is what the tap handle learned about a stream, for its first call.
type tapped struct {
	who   *caller
	admit policy.Decision
}

type tappedKey struct{}

// tap runs when a stream's headers arrive, under gRPC's transport lock:
// it must not block. It identifies the peer (a cached answer, refreshed
// after IdentityTTL), refuses a peer the policy gives nothing, and takes a
// stream slot of the caller, given back when the stream ends.
func (s *Server) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	method := methodName(info.FullMethodName)
	conn := connOf(ctx)
	if conn == nil {
		return nil, status.Error(codes.Unauthenticated, errNoIdentity.Error())
	}
	who, err := conn.get(ctx)
	if err != nil {
		err = status.Error(codes.Unauthenticated, err.Error())
		s.refusals.add(who, method, err)
		return nil, err
	}
	d := s.policy().Admits(who.subject)
	if !d.Allow {
		err := s.denied(d, "")
		s.refusals.addDecision(who, method, d, err)
		return nil, err
	}
	release, err := s.admission.openStream(who, s.cfg.MaxStreamsPerCaller)
	if err != nil {
		s.refusals.addDecision(who, method, d, err)
		return nil, err
	}
	context.AfterFunc(ctx, release) // gRPC cancels a stream's context when it ends
	return context.WithValue(ctx, tappedKey{}, tapped{who: who, admit: d}), nil
}

// Refusal records are bounded: per caller and method refusalRate a second
// (burst refusalBurst), the rest counted and reported with a later record (at
// the latest within a second of the last one, or when the server stops);
// refusalQueue records wait to be written at most.
const (
	refusalRate  = 10
	refusalBurst = 20
	refusalQueue = 256
)

// refusals records calls refused before any message was read. Its run
// goroutine writes the records and the counts of those suppressed.
type refusals struct {
	record func(CallRecord)
	ch     chan CallRecord
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once

	mu sync.Mutex
	by map[string]*refusalCount // by caller key and method; guarded by mu
}

// refusalCount is one caller's refusals of one method. Guarded by refusals.mu.
type refusalCount struct {
	lim        *rate.Limiter
	suppressed int64      // attempts not recorded since the last record
	last       CallRecord // the latest of them
	at         time.Time  // the latest refusal
}

func newRefusals(record func(CallRecord)) *refusals {
	r := &refusals{
		record: record, ch: make(chan CallRecord, refusalQueue),
		stop: make(chan struct{}), done: make(chan struct{}), by: make(map[string]*refusalCount),
	}
	go r.run()
	return r
}

func (r *refusals) run() {
	defer close(r.done)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case rec := <-r.ch:
			r.record(rec)
		case <-tick.C:
			for _, rec := range r.flush(time.Now(), false) {
				r.record(rec)
			}
		case <-r.stop:
			for {
				select {
				case rec := <-r.ch:
					r.record(rec)
				default:
					for _, rec := range r.flush(time.Now(), true) {
						r.record(rec)
					}
					return
				}
			}
		}
	}
}

// flush returns a record for each caller with suppressed refusals, the
// latest standing for the others; all of them when stopping, else those
// whose rate allows one more record. Callers idle for a minute are
// forgotten.
func (r *refusals) flush(now time.Time, all bool) []CallRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []CallRecord
	for k, c := range r.by {
		if c.suppressed > 0 && (all || c.lim.AllowN(now, 1)) {
			rec := c.last
			rec.Suppressed = c.suppressed - 1
			c.suppressed = 0
			out = append(out, rec)
		}
		if c.suppressed == 0 && now.Sub(c.at) > time.Minute {
			delete(r.by, k)
		}
	}
	return out
}

// close records what is pending and stops. Safe to call twice.
func (r *refusals) close() {
	r.once.Do(func() { close(r.stop) })
	<-r.done
}

func (r *refusals) add(who *caller, method string, err error) {
	r.addDecision(who, method, policy.Decision{}, err)
}

// addDecision records one refused attempt: queued to be written, or, over
// the caller's rate or when the queue is full, counted.
func (r *refusals) addDecision(who *caller, method string, d policy.Decision, err error) {
	now := time.Now()
	st := status.Convert(err)
	rec := CallRecord{
		Time: now, Method: method, Code: st.Code(), Err: bounded(st.Message(), maxErrorBytes),
		Rule: d.Rule, Reason: d.Reason,
	}
	key := "/" + method // each caller's refusals are counted by method
	if who != nil {
		rec.Caller, key = who.id, who.key+key
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.by[key]
	if c == nil && len(r.by) >= maxRefusalKeys {
		// Too many callers refused at once: this one is not counted
		// apart, but with the others from its first record on.
		key = "/"
		c = r.by[key]
	}
	if c == nil {
		c = &refusalCount{lim: rate.NewLimiter(refusalRate, refusalBurst)}
		r.by[key] = c
	}
	c.at = now
	if c.suppressed == 0 && c.lim.AllowN(now, 1) {
		select {
		case r.ch <- rec:
			return
		default:
		}
	}
	c.suppressed++
	c.last = rec
}

// maxRefusalKeys bounds the callers whose refusals are counted apart.
const maxRefusalKeys = 4096
