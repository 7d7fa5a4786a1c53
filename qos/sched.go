package qos

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/gpumesh/gpumesh/dscp"
)

// Options tunes a Scheduler. The zero value works.
type Options struct {
	// ChunkSize is the most bytes Writer and Conn admit at once; smaller
	// chunks let an urgent class in sooner. Default 16 KiB; with LinkRate,
	// the default is the whole Segments the link sends in 200µs (one at
	// least), as an urgent chunk waits for about one chunk to drain.
	ChunkSize int
	// Segment is the transport's payload per packet. A paced chunk of a
	// whole number of segments leaves no short packet behind: chunks one
	// segment too long for it sent two packets each, and headers were 22%
	// of the bytes on the wire, not 11%. Default 1208 (a 1280-byte MTU, as
	// tsnet's, less the IPv6 and TCP headers with timestamps).
	Segment int
	// MinShare is the fraction of admitted bytes a waiting lower-priority
	// class is guaranteed while higher classes saturate the scheduler, so
	// it never starves. Default 0.1; at most 0.5.
	MinShare float64
	// Slots is how many chunks may be in flight (admitted, not yet
	// released) at once across all classes. Default 1: an urgent chunk then
	// waits for at most the one chunk being written when it arrives. A write
	// stalled by a slow peer holds its slot, so a node serving many peers
	// may want more.
	Slots int
	// LinkRate, if set, paces all classes together to this many bytes per
	// second: the rate of the narrowest link the node's traffic crosses,
	// or a little less. Chunks are then admitted no faster than the link
	// drains, so the queue forms here, where priority applies, and not in
	// the transport's buffers or a router's FIFO below, where an urgent
	// packet would wait behind every bulk byte already written. 0 means
	// no pacing: chunks go as fast as the writer takes them.
	LinkRate int64
	// LinkBurst is how many bytes may be admitted ahead of the link's pace
	// (after an idle spell, or to keep a writer busy between timer ticks).
	// Default: one chunk. Only with LinkRate.
	LinkBurst int64
	// DefaultClass names the class that admits writes naming no class (""),
	// or a class the scheduler does not have (a class removed by
	// SetClasses, say): a write never fails for its class's name. Every
	// class set must then contain it. Empty: the least urgent class of the
	// set in force (the last one declared among equals).
	DefaultClass string
}

const (
	defaultChunkSize = 16 << 10
	defaultMinShare  = 0.1
	// pacedChunkTime sizes the default chunk of a paced scheduler: the
	// whole segments the link sends in that time, one at least.
	pacedChunkTime = 200 * time.Microsecond
	// defaultSegment is the TCP payload of one overlay packet: tsnet's
	// 1280-byte MTU less the IPv6 header (40), TCP's (20) and its
	// timestamp option (12). It fits IPv4 too.
	defaultSegment = 1208
)

// populate returns a copy of o with defaults filled in, or an error.
func (o Options) populate() (Options, error) {
	if o.ChunkSize < 0 || o.Segment < 0 || o.Slots < 0 || o.MinShare < 0 || o.MinShare > 0.5 || o.LinkRate < 0 || o.LinkBurst < 0 {
		return o, fmt.Errorf("qos: options %+v: chunk size, slots, link rate and burst must be >= 0, min share in [0, 0.5]: %w", o, ErrInvalidClass)
	}
	if o.LinkBurst > 0 && o.LinkRate == 0 {
		return o, fmt.Errorf("qos: options: link burst without link rate: %w", ErrInvalidClass)
	}
	if o.Segment == 0 {
		o.Segment = defaultSegment
	}
	if o.ChunkSize == 0 {
		o.ChunkSize = defaultChunkSize
		if o.LinkRate > 0 {
			segs := int64(float64(o.LinkRate) * pacedChunkTime.Seconds() / float64(o.Segment))
			o.ChunkSize = int(min(max(segs, 1), defaultChunkSize/int64(o.Segment)) * int64(o.Segment))
		}
	}
	if o.MinShare == 0 {
		o.MinShare = defaultMinShare
	}
	if o.Slots == 0 {
		o.Slots = 1
	}
	if o.LinkRate > 0 && o.LinkBurst == 0 {
		o.LinkBurst = int64(o.ChunkSize)
	}
	return o, nil
}

// Scheduler admits chunks of bytes by class before they are written to the
// overlay: strict priority between classes (lower Class.Priority first),
// with Options.MinShare of the bytes guaranteed to a waiting lower class,
// an optional token-bucket cap per class, and optional pacing of all
// classes to the link's rate (Options.LinkRate). Chunks of one class are
// admitted in arrival order. SetClasses replaces the classes while it
// runs. Its only goroutines are the timer callbacks that admit paced
// chunks.
type Scheduler struct {
	opts  Options
	ahead time.Duration // LinkBurst as time at LinkRate; immutable

	mu      sync.Mutex
	byName  map[string]*class // the classes in force; guarded by mu, replaced by SetClasses
	ordered []*class          // byName by priority, then declaration order; guarded by mu
	def     *class            // admits unknown class names; guarded by mu
	free    int               // free slots; guarded by mu
	queued  int               // waiters in all queues; guarded by mu
	linkAt  time.Time         // when the paced link has sent all admitted bytes; guarded by mu
	timer   *time.Timer       // admits paced chunks when the link is due; guarded by mu
	armed   bool              // timer is pending; guarded by mu
	fireAt  time.Time         // when the pending timer fires; guarded by mu

	// Test hooks, called with mu held; set before use.
	onQueued func(class string)
	onGrant  func(class string, n int)
}

// class is a Class with its scheduling state. All of it is guarded by
// Scheduler.mu (the limiter is also safe for concurrent use).
type class struct {
	Class
	rank  int           // index in Scheduler.ordered
	lim   *rate.Limiter // nil without a cap
	burst int           // limiter burst, 0 without a cap
	chunk int           // largest chunk Writer and Conn use
	gone  bool          // removed by SetClasses

	queue  []*waiter // FIFO
	credit int64     // bytes admitted to higher classes while this one waited
	stats  ClassStats
}

type waiter struct {
	c       *class // guarded by Scheduler.mu: SetClasses moves waiters of a removed class
	n       int
	start   time.Time
	ready   chan struct{} // closed on grant
	granted bool          // guarded by Scheduler.mu
}

// ClassStats are the counters of one class.
type ClassStats struct {
	Name     string
	DSCP     dscp.Code
	Priority int
	Rate     int64 // bytes/s cap, 0 if none
	// Bytes and Chunks count what was admitted.
	Bytes  int64
	Chunks int64
	// Queued is the number of chunks waiting now.
	Queued int
	// WaitSum and WaitMax measure the time from Wait to admission, which
	// includes ThrottleSum, the part spent waiting for the rate cap.
	WaitSum     time.Duration
	WaitMax     time.Duration
	ThrottleSum time.Duration
}

// NewScheduler returns a scheduler for classes (see ValidateClasses).
func NewScheduler(classes []Class, opts Options) (*Scheduler, error) {
	opts, err := opts.populate()
	if err != nil {
		return nil, err
	}
	s := &Scheduler{opts: opts, free: opts.Slots}
	if opts.LinkRate > 0 {
		s.ahead = s.linkTime(opts.LinkBurst)
	}
	if err := s.SetClasses(classes); err != nil {
		return nil, err
	}
	return s, nil
}

// Wait blocks until n bytes of class may be written, then returns a release
// func to call once they have been written (it frees the slot for the next
// chunk; calling it again does nothing). A class with a rate cap first
// waits for its tokens. An empty or unknown class name is admitted as the
// default class (Options.DefaultClass). Wait fails only when ctx ends
// first.
func (s *Scheduler) Wait(ctx context.Context, className string, n int) (release func(), err error) {
	n = max(n, 1)
	start := time.Now()
	s.mu.Lock()
	c := s.resolveLocked(className)
	if c.lim != nil { // wait for the tokens without the lock
		lim, burst := c.lim, c.burst
		s.mu.Unlock()
		for rem := n; rem > 0; {
			take := min(rem, burst)
			if err := lim.WaitN(ctx, take); err != nil {
				return nil, fmt.Errorf("qos: wait for class %q: %w", c.Name, ctxErr(ctx, err))
			}
			rem -= take
		}
		throttle := time.Since(start)
		s.mu.Lock()
		if c.gone { // removed while it waited for tokens
			c = s.resolveLocked(c.Name)
		}
		c.stats.ThrottleSum += throttle
	}
	w := &waiter{c: c, n: n, start: start, ready: make(chan struct{})}
	if s.free > 0 && s.queued == 0 && s.linkDueLocked(time.Now(), c) {
		s.grantLocked(w)
		s.mu.Unlock()
		return s.releaser(), nil
	}
	c.queue = append(c.queue, w)
	s.queued++
	if s.onQueued != nil {
		s.onQueued(c.Name)
	}
	s.dispatchLocked() // a free slot may be waiting only for the link
	s.mu.Unlock()

	select {
	case <-w.ready:
		return s.releaser(), nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	if w.granted { // admitted while ctx ended: hand the slot on
		s.free++
		s.dispatchLocked()
	} else {
		q := w.c // SetClasses may have moved w
		i := slices.Index(q.queue, w)
		q.queue = slices.Delete(q.queue, i, i+1)
		s.queued--
	}
	name := w.c.Name
	s.mu.Unlock()
	return nil, fmt.Errorf("qos: wait for class %q: %w", name, ctx.Err())
}

// ctxErr prefers the context's own error over the limiter's wording.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if _, ok := ctx.Deadline(); ok {
		return fmt.Errorf("%w: %w", context.DeadlineExceeded, err) // rate: would exceed deadline
	}
	return err
}

func (s *Scheduler) releaser() func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			s.free++
			s.dispatchLocked()
			s.mu.Unlock()
		})
	}
}

// linkTime is how long the paced link takes to send n bytes.
func (s *Scheduler) linkTime(n int64) time.Duration {
	return time.Duration(float64(n) / float64(s.opts.LinkRate) * float64(time.Second))
}

// urgentAhead is how many LinkBursts ahead of the link's pace the most
// urgent class may be admitted: it need not wait for the timer behind the
// bulk chunk the link is sending, and the few bytes it adds below drain
// in the headroom the pace leaves.
const urgentAhead = 4

// linkDueLocked reports whether the paced link may take another chunk of c
// at now: without pacing always; with it, once the bytes already admitted
// will have drained to within LinkBurst (urgentAhead of them for the most
// urgent class).
func (s *Scheduler) linkDueLocked(now time.Time, c *class) bool {
	if s.opts.LinkRate == 0 {
		return true
	}
	ahead := s.ahead
	if c.rank == 0 {
		ahead *= urgentAhead
	}
	return s.linkAt.Sub(now) <= ahead
}

// armLocked makes the timer dispatch by when the paced link is next due
// for c.
func (s *Scheduler) armLocked(now time.Time, c *class) {
	ahead := s.ahead
	if c.rank == 0 {
		ahead *= urgentAhead
	}
	at := s.linkAt.Add(-ahead)
	if s.armed && !s.fireAt.After(at) {
		return
	}
	if s.timer == nil {
		s.timer = time.AfterFunc(at.Sub(now), s.onTimer)
	} else {
		s.timer.Reset(at.Sub(now))
	}
	s.armed, s.fireAt = true, at
}

func (s *Scheduler) onTimer() {
	s.mu.Lock()
	s.armed = false
	s.dispatchLocked()
	s.mu.Unlock()
}

// grantLocked admits w and updates credits, stats and the paced link.
func (s *Scheduler) grantLocked(w *waiter) {
	s.free--
	w.granted = true
	c := w.c
	if s.opts.LinkRate > 0 {
		now := time.Now()
		s.linkAt = later(s.linkAt, now).Add(s.linkTime(int64(w.n)))
	}
	c.credit = 0
	for _, o := range s.ordered[c.rank+1:] {
		if len(o.queue) > 0 {
			o.credit += int64(w.n)
		}
	}
	d := time.Since(w.start)
	c.stats.Bytes += int64(w.n)
	c.stats.Chunks++
	c.stats.WaitSum += d
	c.stats.WaitMax = max(c.stats.WaitMax, d)
	if s.onGrant != nil {
		s.onGrant(c.Name, w.n)
	}
	close(w.ready)
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// dispatchLocked admits queued chunks while slots are free and the paced
// link is due; if only the link holds them back, it arms the timer.
func (s *Scheduler) dispatchLocked() {
	for s.free > 0 && s.queued > 0 {
		c := s.pickLocked()
		if now := time.Now(); !s.linkDueLocked(now, c) {
			s.armLocked(now, c)
			return
		}
		w := c.queue[0]
		c.queue[0] = nil
		c.queue = c.queue[1:]
		s.queued--
		s.grantLocked(w)
	}
}

// pickLocked returns the class to serve next: the most urgent backlogged
// class, unless a lower backlogged class has been passed over for long
// enough that its minimum share is due (the most urgent such class wins).
func (s *Scheduler) pickLocked() *class {
	var top *class
	for _, c := range s.ordered {
		if len(c.queue) == 0 {
			continue
		}
		if top == nil {
			top = c
			continue
		}
		// Serving c's head of n bytes now keeps its share >= MinShare of
		// the bytes admitted while it waited: credit/(credit+n) <= 1-MinShare.
		due := int64(float64(c.queue[0].n) * (1 - s.opts.MinShare) / s.opts.MinShare)
		if c.credit >= due {
			return c
		}
	}
	return top
}

// Stats returns a snapshot of every class's counters, most urgent first.
func (s *Scheduler) Stats() []ClassStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ClassStats, len(s.ordered))
	for i, c := range s.ordered {
		out[i] = c.stats
		out[i].Queued = len(c.queue)
	}
	return out
}

// Classes returns the classes in force, most urgent first.
func (s *Scheduler) Classes() []Class {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Class, len(s.ordered))
	for i, c := range s.ordered {
		out[i] = c.Class
	}
	return out
}

// Class returns the class a write naming className is admitted as: the
// class of that name, or the default class for "" and unknown names.
func (s *Scheduler) Class(className string) Class {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.resolveLocked(className).Class
}

// ChunkSize returns the largest chunk Writer and Conn admit for class (an
// unknown class: the default class's).
func (s *Scheduler) ChunkSize(className string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.resolveLocked(className).chunk
}

// LinkRate returns the rate all classes are paced to together, in bytes
// per second; 0 when the scheduler does not pace.
func (s *Scheduler) LinkRate() int64 { return s.opts.LinkRate }
