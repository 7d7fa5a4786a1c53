package qos

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// ErrUnknownClass is returned for a class name the scheduler was not
// configured with.
var ErrUnknownClass = errors.New("unknown class")

// Options tunes a Scheduler. The zero value works.
type Options struct {
	// ChunkSize is the most bytes Writer and Conn admit at once; smaller
	// chunks let an urgent class in sooner. Default 16 KiB.
	ChunkSize int
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
}

const (
	defaultChunkSize = 16 << 10
	defaultMinShare  = 0.1
)

// populate returns a copy of o with defaults filled in, or an error.
func (o Options) populate() (Options, error) {
	if o.ChunkSize < 0 || o.Slots < 0 || o.MinShare < 0 || o.MinShare > 0.5 {
		return o, fmt.Errorf("qos: options %+v: chunk size and slots must be >= 0, min share in [0, 0.5]: %w", o, ErrInvalidClass)
	}
	if o.ChunkSize == 0 {
		o.ChunkSize = defaultChunkSize
	}
	if o.MinShare == 0 {
		o.MinShare = defaultMinShare
	}
	if o.Slots == 0 {
		o.Slots = 1
	}
	return o, nil
}

// Scheduler admits chunks of bytes by class before they are written to the
// overlay: strict priority between classes (lower Class.Priority first),
// with Options.MinShare of the bytes guaranteed to a waiting lower class,
// and an optional token-bucket cap per class. Chunks of one class are
// admitted in arrival order. It starts no goroutines.
type Scheduler struct {
	opts    Options
	byName  map[string]*class // immutable after NewScheduler
	ordered []*class          // by priority, then declaration order; immutable

	mu     sync.Mutex
	free   int // free slots; guarded by mu
	queued int // waiters in all queues; guarded by mu

	// Test hooks, called with mu held; set before use.
	onQueued func(class string)
	onGrant  func(class string, n int)
}

// class is a Class with its scheduling state.
type class struct {
	Class
	rank  int
	lim   *rate.Limiter // nil without a cap; safe for concurrent use
	burst int           // limiter burst, 0 without a cap
	chunk int           // largest chunk Writer and Conn use

	// Guarded by Scheduler.mu:
	queue  []*waiter // FIFO
	credit int64     // bytes admitted to higher classes while this one waited
	stats  ClassStats
}

type waiter struct {
	c       *class
	n       int
	start   time.Time
	ready   chan struct{} // closed on grant
	granted bool          // guarded by Scheduler.mu
}

// ClassStats are the counters of one class.
type ClassStats struct {
	Name     string
	DSCP     uint8
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
	if err := ValidateClasses(classes); err != nil {
		return nil, err
	}
	opts, err := opts.populate()
	if err != nil {
		return nil, err
	}
	s := &Scheduler{opts: opts, byName: make(map[string]*class, len(classes)), free: opts.Slots}
	for _, c := range classes {
		cl := &class{Class: c, chunk: opts.ChunkSize}
		if c.Rate > 0 {
			burst := c.Burst
			if burst == 0 {
				burst = max(int64(opts.ChunkSize), c.Rate/10)
			}
			cl.burst = int(min(burst, 1<<30))
			cl.lim = rate.NewLimiter(rate.Limit(c.Rate), cl.burst)
			cl.chunk = min(cl.chunk, cl.burst)
		}
		cl.stats = ClassStats{Name: c.Name, DSCP: c.DSCP, Priority: c.Priority, Rate: c.Rate}
		s.byName[c.Name] = cl
		s.ordered = append(s.ordered, cl)
	}
	slices.SortStableFunc(s.ordered, func(a, b *class) int { return cmp.Compare(a.Priority, b.Priority) })
	for i, c := range s.ordered {
		c.rank = i
	}
	return s, nil
}

// Wait blocks until n bytes of class may be written, then returns a release
// func to call once they have been written (it frees the slot for the next
// chunk; calling it again does nothing). A class with a rate cap first
// waits for its tokens. Wait fails only for an unknown class or when ctx
// ends first.
func (s *Scheduler) Wait(ctx context.Context, className string, n int) (release func(), err error) {
	c, ok := s.byName[className]
	if !ok {
		return nil, fmt.Errorf("qos: class %q: %w", className, ErrUnknownClass)
	}
	n = max(n, 1)
	start := time.Now()
	var throttle time.Duration
	if c.lim != nil {
		for rem := n; rem > 0; {
			take := min(rem, c.burst)
			if err := c.lim.WaitN(ctx, take); err != nil {
				return nil, fmt.Errorf("qos: wait for class %q: %w", className, ctxErr(ctx, err))
			}
			rem -= take
		}
		throttle = time.Since(start)
	}
	w := &waiter{c: c, n: n, start: start, ready: make(chan struct{})}

	s.mu.Lock()
	c.stats.ThrottleSum += throttle
	if s.free > 0 && s.queued == 0 {
		s.grantLocked(w)
		s.mu.Unlock()
		return s.releaser(), nil
	}
	c.queue = append(c.queue, w)
	s.queued++
	if s.onQueued != nil {
		s.onQueued(className)
	}
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
		i := slices.Index(c.queue, w)
		c.queue = slices.Delete(c.queue, i, i+1)
		s.queued--
	}
	s.mu.Unlock()
	return nil, fmt.Errorf("qos: wait for class %q: %w", className, ctx.Err())
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

// grantLocked admits w and updates credits and stats.
func (s *Scheduler) grantLocked(w *waiter) {
	s.free--
	w.granted = true
	c := w.c
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

// dispatchLocked admits queued chunks while slots are free.
func (s *Scheduler) dispatchLocked() {
	for s.free > 0 && s.queued > 0 {
		c := s.pickLocked()
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

// Classes returns the configured classes, most urgent first.
func (s *Scheduler) Classes() []Class {
	out := make([]Class, len(s.ordered))
	for i, c := range s.ordered {
		out[i] = c.Class
	}
	return out
}

// ChunkSize returns the largest chunk Writer and Conn admit for class.
func (s *Scheduler) ChunkSize(className string) (int, error) {
	c, ok := s.byName[className]
	if !ok {
		return 0, fmt.Errorf("qos: class %q: %w", className, ErrUnknownClass)
	}
	return c.chunk, nil
}
