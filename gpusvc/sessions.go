package gpusvc

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Sessions own a caller's resident buffers and loaded modules.
//
// A session belongs to the overlay identity that opened it: a session ID
// presented by anyone else is answered exactly like an unknown one
// (NotFound), so IDs reveal nothing about other callers. Buffer IDs are
// numbered per session and are never the backend's handles.
//
// Session end (CloseSession, idle timeout, Server.Stop) frees every buffer
// through the backend's Memory.Free, which zeroes it. A buffer in use by a
// call in flight (a Write, a Read, a Compute or Launch reading it) is
// pinned, and freed when the last such call ends.

// DefaultIdleTimeout ends sessions whose policy rule sets no idle_timeout.
const DefaultIdleTimeout = 10 * time.Minute

// freeTimeout bounds one buffer's Free when its caller is gone.
const freeTimeout = 30 * time.Second

// sessions is the server's table of sessions. It owns the idle reaper
// goroutine, started with the first session and stopped by close.
type sessions struct {
	mem         Memory // nil when the backend keeps no buffers
	quotas      *quotas
	log         *slog.Logger
	defaultIdle time.Duration

	mu      sync.Mutex
	m       map[uint64]*session // by session ID; guarded by mu
	owned   map[string]int      // sessions per owner; guarded by mu
	closed  bool                // guarded by mu
	started bool                // the reaper runs; guarded by mu

	wake chan struct{} // capacity 1: the reaper re-reads the deadlines
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// session is one caller's session. Its mutable fields are guarded by
// sessions.mu.
type session struct {
	id    uint64
	owner string // quota key of the identity that opened it
	who   string // that identity, for messages and logs
	idle  time.Duration

	last    time.Time // last use; guarded by sessions.mu
	active  int       // calls in progress on it; guarded by sessions.mu
	gone    bool      // closed; guarded by sessions.mu
	buffers map[uint64]*buffer
	nextBuf uint64
	modules map[moduleKey]string // loaded modules → the right they were loaded under
}

type moduleKey struct {
	gpu int
	id  string
}

// buffer is one resident buffer. pins and dropped are guarded by
// sessions.mu; the rest is fixed.
type buffer struct {
	handle uint64
	size   int64
	gpu    device
	owner  string // quota key its bytes are counted against

	pins    int  // calls using it
	dropped bool // no longer in a session: freed at the last unpin
}

// counted is what a buffer counts against quotas: its size and overhead.
func (b *buffer) counted() int64 { return b.size + bufferOverhead }

func newSessions(mem Memory, q *quotas, log *slog.Logger, defaultIdle time.Duration) *sessions {
	return &sessions{
		mem: mem, quotas: q, log: log, defaultIdle: defaultIdle,
		m:     make(map[uint64]*session),
		owned: make(map[string]int),
		wake:  make(chan struct{}, 1),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
}

// reap ends sessions idle for longer than their timeout. It sleeps until
// the earliest deadline, or until woken because one may have moved closer.
func (t *sessions) reap() {
	defer close(t.done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next := t.expire(time.Now())
		wait := time.Hour
		if !next.IsZero() {
			wait = max(time.Until(next), time.Millisecond)
		}
		timer.Reset(wait)
		select {
		case <-t.stop:
			return
		case <-t.wake:
		case <-timer.C:
		}
	}
}

// expire closes the sessions idle past their deadline at now and returns
// the next deadline (zero when none).
func (t *sessions) expire(now time.Time) (next time.Time) {
	var free []*buffer
	t.mu.Lock()
	for _, s := range t.m {
		if s.active > 0 {
			continue // its last call's end wakes us
		}
		d := s.last.Add(s.idle)
		if !now.Before(d) {
			bs := t.endLocked(s)
			free = append(free, bs...)
			t.log.Info("session idle, closed", "session", s.id, "caller", s.who, "idle_timeout", s.idle, "buffers", len(bs))
			continue
		}
		if next.IsZero() || d.Before(next) {
			next = d
		}
	}
	t.mu.Unlock()
	t.freeAll(free)
	return next
}

func (t *sessions) poke() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// close ends every session and stops the reaper. Safe to call twice.
func (t *sessions) close() {
	t.once.Do(func() {
		t.mu.Lock()
		t.closed = true
		started := t.started
		t.mu.Unlock()
		close(t.stop)
		if started {
			<-t.done
		}
		var free []*buffer
		t.mu.Lock()
		for _, s := range t.m {
			free = append(free, t.endLocked(s)...)
		}
		t.mu.Unlock()
		t.freeAll(free)
	})
}

// endLocked removes s from the table and returns its buffers that can be
// freed now; pinned ones are freed at their last unpin.
func (t *sessions) endLocked(s *session) []*buffer {
	delete(t.m, s.id)
	if t.owned[s.owner]--; t.owned[s.owner] <= 0 {
		delete(t.owned, s.owner)
	}
	s.gone = true
	var free []*buffer
	for id, b := range s.buffers {
		delete(s.buffers, id)
		if b.dropLocked() {
			free = append(free, b)
		}
	}
	return free
}

// dropLocked takes b out of its session and reports whether it can be
// freed now.
func (b *buffer) dropLocked() bool {
	b.dropped = true
	return b.pins == 0
}

// free zeroes and releases b in the backend and returns its bytes to the
// owner's quota and the host's budget. It runs whether or not the caller
// is still there.
func (t *sessions) free(b *buffer) {
	ctx, cancel := context.WithTimeout(context.Background(), freeTimeout)
	defer cancel()
	if err := t.mem.Free(ctx, b.handle); err != nil {
		t.log.Warn("free buffer", "handle", b.handle, "err", err)
	}
	t.quotas.release(b.owner, b.counted())
}

func (t *sessions) freeAll(bs []*buffer) {
	for _, b := range bs {
		t.free(b)
	}
}

// open starts a session for who, unless released says who's pod was
// released: asked under the table's lock, so that a session opened while
// its pod is released is either refused or ended by endOwner.
func (t *sessions) open(who *caller, idle time.Duration, released func(key string) bool) (*session, error) {
	if idle <= 0 {
		idle = t.defaultIdle
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, status.Error(codes.Unavailable, "gpumesh: the server is stopping")
	}
	if who.id.Pod != nil && released != nil && released(who.key) {
		return nil, podGone(who)
	}
	if n := t.owned[who.key]; n >= maxSessionsPerCaller {
		return nil, status.Errorf(codes.ResourceExhausted, "gpumesh: %s already holds %d sessions; close one first", who.name, n)
	}
	id := rand.Uint64()
	for id == 0 || t.m[id] != nil {
		id = rand.Uint64()
	}
	s := &session{
		id: id, owner: who.key, who: who.name, idle: idle, last: time.Now(),
		buffers: make(map[uint64]*buffer), modules: make(map[moduleKey]string),
	}
	t.m[id] = s
	t.owned[who.key]++
	if !t.started {
		t.started = true
		go t.reap()
	}
	t.poke()
	return s, nil
}

// endOwner ends every session of owner (a released pod) and frees their
// buffers (a buffer a call still reads, at that call's end). It returns
// how many sessions and buffers that was.
func (t *sessions) endOwner(owner string) (sessions, buffers int) {
	var free []*buffer
	t.mu.Lock()
	for _, s := range t.m {
		if s.owner != owner {
			continue
		}
		sessions++
		buffers += len(s.buffers)
		free = append(free, t.endLocked(s)...)
	}
	t.mu.Unlock()
	t.freeAll(free)
	return sessions, buffers
}

func noSession(id uint64) error {
	return status.Errorf(codes.NotFound, "gpumesh: no session %d (closed, idle past its timeout, or never opened by you)", id)
}

// lookupLocked finds owner's session id, marking it used.
func (t *sessions) lookupLocked(owner string, id uint64) (*session, error) {
	if id == 0 {
		return nil, status.Error(codes.InvalidArgument, "gpumesh: no session given; call OpenSession first")
	}
	s := t.m[id]
	if s == nil || s.owner != owner {
		return nil, noSession(id)
	}
	s.last = time.Now()
	return s, nil
}

// use finds owner's session id and holds it open against the idle timeout
// until the call c ends.
func (t *sessions) use(c *call, id uint64) (*session, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, err := t.lookupLocked(c.who.key, id)
	if err != nil {
		return nil, err
	}
	s.active++
	c.onEnd(func() {
		t.mu.Lock()
		s.active--
		s.last = time.Now()
		t.mu.Unlock()
		t.poke()
	})
	return s, nil
}

// end closes owner's session id.
func (t *sessions) end(owner string, id uint64) error {
	t.mu.Lock()
	s, err := t.lookupLocked(owner, id)
	if err != nil {
		t.mu.Unlock()
		return err
	}
	free := t.endLocked(s)
	t.mu.Unlock()
	t.freeAll(free)
	return nil
}

func noBuffer(session, id uint64) error {
	return status.Errorf(codes.NotFound, "gpumesh: no buffer %d in session %d", id, session)
}

// pin finds buffers ids of s and keeps them from being freed until the
// call c ends: a Free meanwhile takes them out of the session at once and
// frees them then.
func (t *sessions) pin(c *call, s *session, ids ...uint64) ([]*buffer, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	bs := make([]*buffer, len(ids))
	for i, id := range ids {
		if bs[i] = s.buffers[id]; bs[i] == nil {
			return nil, noBuffer(s.id, id)
		}
	}
	for _, b := range bs {
		b.pins++
		c.onEnd(func() { t.unpin(b) })
	}
	return bs, nil
}

func (t *sessions) unpin(b *buffer) {
	t.mu.Lock()
	b.pins--
	last := b.dropped && b.pins == 0
	t.mu.Unlock()
	if last {
		t.free(b)
	}
}

// alloc reserves n bytes (and the overhead) of who's memory quota under
// the call's decision and the host's budget, and allocates them on dev.
// The buffer is in no session yet: publish adds it, or the caller frees
// it with t.free.
func (t *sessions) alloc(ctx context.Context, c *call, dev device, n uint64) (*buffer, error) {
	if n == 0 {
		return nil, status.Error(codes.InvalidArgument, "gpumesh: alloc of 0 bytes")
	}
	if n > maxAllocBytes {
		return nil, status.Errorf(codes.InvalidArgument, "gpumesh: alloc of %d bytes is beyond any device", n)
	}
	b := &buffer{size: int64(n), gpu: dev, owner: c.who.key}
	if err := t.quotas.reserve(c.who, b.counted(), c.decision.Limits.MaxMemory, c.decision.Rule); err != nil {
		return nil, err
	}
	h, err := t.mem.Alloc(ctx, dev.index, b.size)
	if err != nil {
		t.quotas.release(b.owner, b.counted())
		return nil, statusOf(fmt.Errorf("alloc %d bytes on gpu %d: %w", n, dev.index, err))
	}
	b.handle = h
	return b, nil
}

// publish adds b to s and returns its ID there. If s has ended or holds
// as many buffers as it may, b is freed and the error says so.
func (t *sessions) publish(s *session, b *buffer) (uint64, error) {
	t.mu.Lock()
	if s.gone || len(s.buffers) >= maxBuffersPerSession {
		full := !s.gone
		t.mu.Unlock()
		t.free(b)
		if full {
			return 0, tooManyBuffers(s)
		}
		return 0, noSession(s.id)
	}
	s.nextBuf++
	id := s.nextBuf
	s.buffers[id] = b
	t.mu.Unlock()
	return id, nil
}

func tooManyBuffers(s *session) error {
	return status.Errorf(codes.ResourceExhausted, "gpumesh: session %d holds %d buffers, its most; free some first", s.id, maxBuffersPerSession)
}

// room says whether s may hold another buffer, before one is allocated.
func (t *sessions) room(s *session) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(s.buffers) >= maxBuffersPerSession {
		return tooManyBuffers(s)
	}
	return nil
}

// remove frees buffer id of s (at its last unpin if in use).
func (t *sessions) remove(s *session, id uint64) error {
	t.mu.Lock()
	b := s.buffers[id]
	if b == nil {
		t.mu.Unlock()
		return noBuffer(s.id, id)
	}
	delete(s.buffers, id)
	now := b.dropLocked()
	t.mu.Unlock()
	if now {
		t.free(b)
	}
	return nil
}

// addModule notes a module loaded in s under right.
func (t *sessions) addModule(s *session, k moduleKey, right string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := s.modules[k]; !ok && len(s.modules) >= maxModulesPerSession {
		return status.Errorf(codes.ResourceExhausted, "gpumesh: session %d has loaded %d modules, its most; open another session", s.id, maxModulesPerSession)
	}
	s.modules[k] = right
	return nil
}

// moduleRoom says whether s may load another module, before it is loaded.
func (t *sessions) moduleRoom(s *session) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(s.modules) >= maxModulesPerSession {
		return status.Errorf(codes.ResourceExhausted, "gpumesh: session %d has loaded %d modules, its most; open another session", s.id, maxModulesPerSession)
	}
	return nil
}

func (t *sessions) module(s *session, k moduleKey) (right string, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	right, ok = s.modules[k]
	return right, ok
}

// count reports the open sessions and the buffers they hold.
func (t *sessions) count() (sessions, buffers int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, s := range t.m {
		buffers += len(s.buffers)
	}
	return len(t.m), buffers
}

// Sessions reports how many sessions are open and how many buffers they
// hold.
func (s *Server) Sessions() (sessions, buffers int) { return s.sessions.count() }
