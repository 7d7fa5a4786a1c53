package qos

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	"golang.org/x/time/rate"

	"github.com/gpumesh/gpumesh/dscp"
)

// Class is one traffic class. The policy declares classes; the node copies
// them into this type.
type Class struct {
	// Name identifies the class ("interactive", "gpu", "bulk").
	Name string
	// DSCP is the code point the class's packets carry; required (CS0 is
	// best effort, dscp.None is no class's code point).
	DSCP dscp.Code
	// Priority orders classes: a lower value is served first, as with tc
	// priorities (0 is the most urgent).
	Priority int
	// Rate caps the class at this many bytes per second; 0 means no cap.
	Rate int64
	// Burst is the token-bucket depth in bytes for Rate; 0 picks a default
	// (Options.ChunkSize, or a tenth of a second of Rate if that is larger).
	// It must be 0 when Rate is 0.
	Burst int64
}

// ErrInvalidClass reports a class configuration qos cannot use.
var ErrInvalidClass = errors.New("invalid class")

// ValidateClasses checks a class list: at least one class, unique non-empty
// names, a DSCP code point each, non-negative rates and bursts, and no burst
// without a rate. Errors wrap ErrInvalidClass.
func ValidateClasses(classes []Class) error {
	if len(classes) == 0 {
		return fmt.Errorf("qos: no classes: %w", ErrInvalidClass)
	}
	seen := make(map[string]bool, len(classes))
	for i, c := range classes {
		switch {
		case c.Name == "":
			return fmt.Errorf("qos: class %d: empty name: %w", i, ErrInvalidClass)
		case seen[c.Name]:
			return fmt.Errorf("qos: class %q: duplicate name: %w", c.Name, ErrInvalidClass)
		case !c.DSCP.Valid():
			return fmt.Errorf("qos: class %q: dscp %v is not a code point: %w", c.Name, c.DSCP, ErrInvalidClass)
		case c.Rate < 0:
			return fmt.Errorf("qos: class %q: negative rate %d: %w", c.Name, c.Rate, ErrInvalidClass)
		case c.Burst < 0:
			return fmt.Errorf("qos: class %q: negative burst %d: %w", c.Name, c.Burst, ErrInvalidClass)
		case c.Burst > 0 && c.Rate == 0:
			return fmt.Errorf("qos: class %q: burst without rate: %w", c.Name, ErrInvalidClass)
		}
		seen[c.Name] = true
	}
	return nil
}

// ErrNoDefaultClass reports a class set without the scheduler's
// Options.DefaultClass.
var ErrNoDefaultClass = errors.New("no default class")

// SetClasses replaces the scheduler's classes with classes, all or
// nothing: the set is checked first (ValidateClasses, and it must contain
// Options.DefaultClass when that is set), and an error leaves the classes
// in force untouched.
//
// A class that keeps its name keeps its counters and its queue, and takes
// the new DSCP, priority, rate and burst. A class that is new starts at
// zero. Chunks waiting in a removed class are moved, in order, to the
// default class and admitted through it; so are later writes that still
// name it (a connection whose class is moved with SetClass on its own
// time). Writes in flight never fail for it.
func (s *Scheduler) SetClasses(classes []Class) error {
	if err := ValidateClasses(classes); err != nil {
		return err
	}
	if d := s.opts.DefaultClass; d != "" && !slices.ContainsFunc(classes, func(c Class) bool { return c.Name == d }) {
		return fmt.Errorf("qos: classes lack the default class %q: %w", d, ErrNoDefaultClass)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	byName := make(map[string]*class, len(classes))
	ordered := make([]*class, 0, len(classes))
	for _, c := range classes {
		cl := s.byName[c.Name]
		if cl == nil {
			cl = &class{}
		}
		cl.configure(c, s.opts.ChunkSize)
		byName[c.Name] = cl
		ordered = append(ordered, cl)
	}
	slices.SortStableFunc(ordered, func(a, b *class) int { return cmp.Compare(a.Priority, b.Priority) })
	for i, c := range ordered {
		c.rank = i
	}
	def := ordered[len(ordered)-1]
	if s.opts.DefaultClass != "" {
		def = byName[s.opts.DefaultClass]
	}
	for _, old := range s.ordered {
		if byName[old.Name] == old {
			continue
		}
		old.gone = true
		for _, w := range old.queue {
			w.c = def
			def.queue = append(def.queue, w)
		}
		old.queue = nil
	}
	s.byName, s.ordered, s.def = byName, ordered, def
	s.dispatchLocked() // the new order may admit a chunk now
	return nil
}

// configure sets c's class, keeping its counters and queue. A limiter is
// replaced only when the rate or burst changes, so the tokens a surviving
// class has saved stay.
func (c *class) configure(k Class, chunkSize int) {
	old := c.Class
	c.Class = k
	c.chunk = chunkSize
	c.stats.Name, c.stats.DSCP, c.stats.Priority, c.stats.Rate = k.Name, k.DSCP, k.Priority, k.Rate
	if k.Rate == 0 {
		c.lim, c.burst = nil, 0
		return
	}
	burst := k.Burst
	if burst == 0 {
		burst = max(int64(chunkSize), k.Rate/10)
	}
	c.chunk = min(c.chunk, int(min(burst, 1<<30)))
	if c.lim != nil && old.Rate == k.Rate && c.burst == int(min(burst, 1<<30)) {
		return
	}
	c.burst = int(min(burst, 1<<30))
	c.lim = rate.NewLimiter(rate.Limit(k.Rate), c.burst)
}

// resolveLocked returns the class admitting writes named name: that class,
// or the default class. s.mu is held.
func (s *Scheduler) resolveLocked(name string) *class {
	if c, ok := s.byName[name]; ok {
		return c
	}
	return s.def
}
