package wanlab

import (
	"container/heap"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// Impairment says what one direction of the link does to the packets that
// cross it. The zero value is a perfect link: no delay, loss or limit.
//
// A packet meets the impairments in this order: loss (random or bursty),
// the bottleneck (Rate, with a tail-drop queue of Queue), the path's delay
// with its jitter, reordering, duplication.
type Impairment struct {
	// Delay is the one-way delay after the bottleneck.
	Delay time.Duration
	// Jitter varies each packet's delay uniformly within Delay ± Jitter
	// (never below 0). Jitter alone never reorders: a packet never leaves
	// before the one that arrived ahead of it.
	Jitter time.Duration
	// Loss is the probability that a packet is lost, each independently
	// (0 to 1). Ignored when Burst is set.
	Loss float64
	// Burst, if set, loses packets in bursts instead (Gilbert–Elliott).
	Burst *GilbertElliott
	// Reorder is the probability that a packet is held back until
	// ReorderDepth later packets have left ahead of it.
	Reorder float64
	// ReorderDepth is how many later packets overtake a held one; 0 means 1.
	ReorderDepth int
	// ReorderTimeout is the longest a held packet waits for them past its
	// own due time; 0 means 5 ms.
	ReorderTimeout time.Duration
	// Duplicate is the probability that a packet is delivered twice.
	Duplicate float64
	// Rate is the bottleneck's rate in bits per second of IP packets; 0
	// means no limit.
	Rate int64
	// Queue is how much the bottleneck buffers, as time at Rate; a packet
	// that would wait longer is dropped (tail drop). 0 means 20 ms.
	Queue time.Duration
}

// GilbertElliott is a two-state loss model: a good state and a bad one,
// each with its own loss probability; after each packet the state changes
// with probability GoodToBad or BadToGood.
type GilbertElliott struct {
	GoodToBad, BadToGood float64
	LossGood, LossBad    float64
}

// BurstLoss returns a Gilbert model (no loss when good, all lost when bad)
// losing the fraction mean of packets in bursts of meanBurst packets on
// average.
func BurstLoss(mean, meanBurst float64) *GilbertElliott {
	r := 1 / meanBurst
	return &GilbertElliott{GoodToBad: mean / (1 - mean) * r, BadToGood: r, LossBad: 1}
}

// MeanLoss is the long-run fraction of packets the model loses.
func (g *GilbertElliott) MeanLoss() float64 {
	bad := g.GoodToBad / (g.GoodToBad + g.BadToGood)
	return bad*g.LossBad + (1-bad)*g.LossGood
}

const (
	defaultReorderTimeout = 5 * time.Millisecond
	defaultQueue          = 20 * time.Millisecond
)

// prob is a named probability, for validation.
type prob struct {
	name string
	p    float64
}

// validate checks im and returns it with its defaults filled in.
func (im Impairment) validate() (Impairment, error) {
	probs := []prob{{"loss", im.Loss}, {"reorder", im.Reorder}, {"duplicate", im.Duplicate}}
	if g := im.Burst; g != nil {
		probs = append(probs, prob{"burst good-to-bad", g.GoodToBad}, prob{"burst bad-to-good", g.BadToGood},
			prob{"burst loss when good", g.LossGood}, prob{"burst loss when bad", g.LossBad})
		if g.GoodToBad+g.BadToGood == 0 {
			return im, errors.New("wanlab: burst loss: the state never changes (both transition probabilities 0)")
		}
	}
	for _, p := range probs {
		if !(p.p >= 0 && p.p <= 1) {
			return im, fmt.Errorf("wanlab: %s probability %v not within [0, 1]", p.name, p.p)
		}
	}
	switch {
	case im.Delay < 0, im.Jitter < 0, im.ReorderTimeout < 0, im.Queue < 0:
		return im, errors.New("wanlab: negative delay, jitter, reorder timeout or queue")
	case im.Rate < 0:
		return im, fmt.Errorf("wanlab: negative rate %d", im.Rate)
	case im.ReorderDepth < 0 || im.ReorderDepth > 1000:
		return im, fmt.Errorf("wanlab: reorder depth %d not within [0, 1000]", im.ReorderDepth)
	}
	if im.ReorderDepth == 0 {
		im.ReorderDepth = 1
	}
	if im.ReorderTimeout == 0 {
		im.ReorderTimeout = defaultReorderTimeout
	}
	if im.Queue == 0 {
		im.Queue = defaultQueue
	}
	return im, nil
}

// Fate is what a Line decided for one packet.
type Fate uint8

const (
	Delivered Fate = iota // it leaves the line (perhaps late, perhaps twice)
	Lost                  // random or bursty loss
	Overflow              // the bottleneck's queue was full
)

func (f Fate) String() string {
	switch f {
	case Delivered:
		return "delivered"
	case Lost:
		return "lost"
	case Overflow:
		return "overflow"
	}
	return fmt.Sprintf("Fate(%d)", uint8(f))
}

// Verdict is a Line's decision for one packet as it arrives.
type Verdict struct {
	Index      uint64        // the packet's arrival number on the line, from 0
	Fate       Fate          // Delivered, Lost or Overflow
	Due        time.Duration // when it leaves (held packets: at the latest)
	Held       bool          // reordered: it waits for later packets to pass
	Duplicated bool          // it leaves twice
}

// Delivery is a packet leaving the line.
type Delivery struct {
	Data    []byte
	Index   uint64        // arrival number
	Arrived time.Duration // when it arrived
	Due     time.Duration // when it was due to leave
	Copy    bool          // the second of a duplicated packet
}

// Stats count what a line did. Out counts deliveries, copies included.
type Stats struct {
	In, Lost, Overflow, Held, Duplicated, Out uint64
	BytesIn, BytesOut                         uint64
}

// Line is one direction of the link. It is a pure function of the packets
// pushed into it and their arrival times: the same seed, sizes and times
// give the same fates, the same due times and the same order out, whenever
// Pop is called. Times are durations since an origin the caller chooses.
// A Line is not safe for concurrent use.
type Line struct {
	im  Impairment
	rng *rand.Rand

	bad        bool          // the Gilbert–Elliott state
	index      uint64        // arrivals so far
	seq        uint64        // insertion order, to break ties among equal due times
	lastDepart time.Duration // when the bottleneck finishes the last admitted packet
	lastDue    time.Duration // the latest due time handed out (FIFO)
	queue      dueHeap
	held       []*pending
	stats      Stats
}

// NewLine returns a line impairing as im, drawing its random decisions
// from seed and stream (the two directions of a lab use streams 0 and 1).
func NewLine(im Impairment, seed, stream uint64) (*Line, error) {
	im, err := im.validate()
	if err != nil {
		return nil, err
	}
	return &Line{im: im, rng: rand.New(rand.NewPCG(seed, stream))}, nil
}

// Impairment returns the line's impairment, defaults filled in.
func (l *Line) Impairment() Impairment { return l.im }

// Stats returns what the line has done so far.
func (l *Line) Stats() Stats { return l.stats }

// Queued is the number of packets in the line (waiting or held).
func (l *Line) Queued() int { return len(l.queue) + len(l.held) }

// txTime is how long the bottleneck takes to send size bytes.
func (l *Line) txTime(size int) time.Duration {
	if l.im.Rate == 0 {
		return 0
	}
	return time.Duration(int64(size) * 8 * int64(time.Second) / l.im.Rate)
}

// Push admits a packet arriving at now; the line owns data from then on.
// Every packet draws the same random numbers whatever its fate, so that
// the fates of later packets do not depend on the timing of earlier ones.
func (l *Line) Push(now time.Duration, data []byte) Verdict {
	uState, uLoss, uJitter, uReorder, uDup := l.rng.Float64(), l.rng.Float64(), l.rng.Float64(), l.rng.Float64(), l.rng.Float64()
	v := Verdict{Index: l.index}
	l.index++
	l.stats.In++
	l.stats.BytesIn += uint64(len(data))

	lost := uLoss < l.im.Loss
	if g := l.im.Burst; g != nil {
		p := g.LossGood
		if l.bad {
			p = g.LossBad
		}
		lost = uLoss < p
		if l.bad {
			l.bad = uState >= g.BadToGood
		} else {
			l.bad = uState < g.GoodToBad
		}
	}
	if lost {
		v.Fate = Lost
		l.stats.Lost++
		return v
	}

	tx := l.txTime(len(data))
	start := max(now, l.lastDepart)
	if l.im.Rate > 0 && start-now+tx > l.im.Queue {
		v.Fate = Overflow
		l.stats.Overflow++
		return v
	}
	l.lastDepart = start + tx
	delay := l.im.Delay + time.Duration((2*uJitter-1)*float64(l.im.Jitter))
	v.Due = max(l.lastDepart+max(delay, 0), l.lastDue)
	l.lastDue = v.Due
	v.Duplicated = uDup < l.im.Duplicate
	v.Held = uReorder < l.im.Reorder

	p := &pending{Delivery: Delivery{Data: data, Index: v.Index, Arrived: now, Due: v.Due}}
	if v.Held {
		l.stats.Held++
		p.wait = l.im.ReorderDepth
		p.deadline = v.Due + l.im.ReorderTimeout
		p.dup = v.Duplicated
		l.held = append(l.held, p)
		return v
	}
	l.enqueue(p, v.Duplicated)
	// This packet has overtaken every held one; those it was the last to
	// overtake leave right after it.
	l.releaseHeld(func(h *pending) (time.Duration, bool) {
		h.wait--
		return v.Due, h.wait <= 0
	})
	return v
}

// releaseHeld schedules each held packet that leave lets go, due when it
// says, and keeps the others held, in order.
func (l *Line) releaseHeld(leave func(h *pending) (due time.Duration, ok bool)) {
	kept := l.held[:0]
	for _, h := range l.held {
		due, ok := leave(h)
		if !ok {
			kept = append(kept, h)
			continue
		}
		h.Due = due
		l.enqueue(h, h.dup)
	}
	clear(l.held[len(kept):])
	l.held = kept
}

// enqueue schedules p, and its copy if dup.
func (l *Line) enqueue(p *pending, dup bool) {
	p.seq = l.seq
	l.seq++
	heap.Push(&l.queue, p)
	if dup {
		l.stats.Duplicated++
		c := &pending{Delivery: p.Delivery, seq: l.seq}
		c.Copy = true
		c.Data = append([]byte(nil), p.Data...)
		l.seq++
		heap.Push(&l.queue, c)
	}
}

// Pop appends to out every packet due at or before now, in the order they
// leave: by due time, then by arrival (a duplicate right after its
// original, a held packet right after the last packet that overtook it).
// Held packets whose wait timed out leave at their deadline.
func (l *Line) Pop(now time.Duration, out []Delivery) []Delivery {
	l.releaseHeld(func(h *pending) (time.Duration, bool) { return h.deadline, h.deadline <= now })
	for len(l.queue) > 0 && l.queue[0].Due <= now {
		p := heap.Pop(&l.queue).(*pending)
		l.stats.Out++
		l.stats.BytesOut += uint64(len(p.Data))
		out = append(out, p.Delivery)
	}
	return out
}

// Next reports when the next packet is due, including held packets'
// deadlines; ok is false when the line is empty.
func (l *Line) Next() (next time.Duration, ok bool) {
	if len(l.queue) > 0 {
		next, ok = l.queue[0].Due, true
	}
	for _, h := range l.held {
		if !ok || h.deadline < next {
			next, ok = h.deadline, true
		}
	}
	return next, ok
}

// pending is a packet waiting in the line.
type pending struct {
	Delivery
	seq      uint64
	wait     int           // held: packets still to overtake it
	deadline time.Duration // held: when it leaves anyway
	dup      bool          // held: it leaves twice
}

// dueHeap orders pending packets by due time, then insertion.
type dueHeap []*pending

func (h dueHeap) Len() int { return len(h) }
func (h dueHeap) Less(i, j int) bool {
	if h[i].Due != h[j].Due {
		return h[i].Due < h[j].Due
	}
	return h[i].seq < h[j].seq
}
func (h dueHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *dueHeap) Push(x any)   { *h = append(*h, x.(*pending)) }
func (h *dueHeap) Pop() any {
	old := *h
	p := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return p
}
