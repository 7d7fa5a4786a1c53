package capture

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
)

// Config says where to capture and which packets to keep.
type Config struct {
	// Netns is the path of the network namespace the interface lives in
	// (/run/netns/NAME for `ip netns`); empty means the process's own.
	Netns string
	// Interface names the interface to capture on.
	Interface string
	// Match selects the packets the capture keeps; nil keeps every
	// frame. It is called from the capture's own goroutine.
	Match func(Packet) bool
}

// Stats counts what a capture saw.
type Stats struct {
	Frames int // frames read from the interface
	Kept   int // frames Match kept
	// Dropped counts frames the kernel dropped because the capture fell
	// behind; a capture that must be complete checks it is 0 after Close.
	Dropped uint64
}

// Capture records the packets crossing one interface, from Start until
// Close. On a loopback interface each packet is seen once, as In (the
// kernel shows it going out and coming back in; like libpcap, the capture
// drops the outgoing copy).
type Capture struct {
	iface string
	match func(Packet) bool
	sock  *socket
	done  chan struct{} // closed when the reader goroutine has returned

	mu      sync.Mutex
	pkts    []Packet      // kept packets, in arrival order; guarded by mu
	frames  int           // guarded by mu
	dropped uint64        // guarded by mu
	err     error         // why the reader stopped early; guarded by mu
	changed chan struct{} // closed and replaced when pkts grows or the reader ends; guarded by mu
	closed  bool          // guarded by mu
}

// Start opens the capture and returns once it is recording: every frame
// that crosses the interface from then on is seen.
func Start(cfg Config) (*Capture, error) {
	if cfg.Interface == "" {
		return nil, errors.New("capture: no interface named")
	}
	s, err := open(cfg.Netns, cfg.Interface)
	if err != nil {
		return nil, err
	}
	c := &Capture{
		iface: cfg.Interface, match: cfg.Match, sock: s,
		done: make(chan struct{}), changed: make(chan struct{}),
	}
	go c.run()
	return c, nil
}

func (c *Capture) run() {
	defer close(c.done)
	err := c.sock.read(c.add)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.err = err
	c.notifyLocked()
}

func (c *Capture) add(dir Direction, etherType uint16, b []byte) {
	p := Decode(etherType, b)
	p.Dir = dir
	keep := c.match == nil || c.match(p)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.frames++
	if keep {
		c.pkts = append(c.pkts, p)
		c.notifyLocked()
	}
}

func (c *Capture) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// Packets returns the packets kept so far (all of them after Close).
func (c *Capture) Packets() []Packet {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.pkts)
}

// Len returns how many packets have been kept so far.
func (c *Capture) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pkts)
}

// Stats returns the counters so far.
func (c *Capture) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		if d, err := c.sock.drops(); err == nil {
			c.dropped += d
		}
	}
	return Stats{Frames: c.frames, Kept: len(c.pkts), Dropped: c.dropped}
}

// Wait blocks until n packets have been kept and returns the first n. If
// ctx ends or the capture stops first, it returns what it has and an error.
func (c *Capture) Wait(ctx context.Context, n int) ([]Packet, error) {
	var out []Packet
	err := c.waitUntil(ctx, func(pkts []Packet) bool {
		if len(pkts) < n {
			return false
		}
		out = slices.Clone(pkts[:n])
		return true
	})
	if err != nil {
		pkts := c.Packets()
		return pkts, fmt.Errorf("capture on %s: %d of %d packets: %w", c.iface, len(pkts), n, err)
	}
	return out, nil
}

// WaitFor blocks until a kept packet satisfies match and returns the
// first that does.
func (c *Capture) WaitFor(ctx context.Context, match func(Packet) bool) (Packet, error) {
	var found Packet
	next := 0
	err := c.waitUntil(ctx, func(pkts []Packet) bool {
		for ; next < len(pkts); next++ {
			if match(pkts[next]) {
				found = pkts[next]
				return true
			}
		}
		return false
	})
	if err != nil {
		return Packet{}, fmt.Errorf("capture on %s: no such packet among %d: %w", c.iface, next, err)
	}
	return found, nil
}

// waitUntil calls done with the kept packets each time they grow, until
// it returns true, ctx ends or the reader stops.
func (c *Capture) waitUntil(ctx context.Context, done func([]Packet) bool) error {
	// done runs without the lock, on a snapshot: kept packets are only
	// ever appended, never changed.
	for {
		c.mu.Lock()
		pkts, changed := c.pkts, c.changed
		c.mu.Unlock()
		if done(pkts) {
			return nil
		}
		select {
		case <-changed:
		case <-c.done:
			// The reader has stopped: one last look, then say why.
			c.mu.Lock()
			pkts, err := c.pkts, c.err
			c.mu.Unlock()
			switch {
			case done(pkts):
				return nil
			case err != nil:
				return err
			}
			return net.ErrClosed
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Close stops the capture after reading what the kernel has already
// queued for it. Packets, Len and Stats keep working; a second Close
// returns net.ErrClosed.
func (c *Capture) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return net.ErrClosed
	}
	c.closed = true
	c.mu.Unlock()
	c.sock.stop()
	<-c.done
	d, derr := c.sock.drops()
	c.mu.Lock()
	c.dropped += d
	c.mu.Unlock()
	return errors.Join(derr, c.sock.close())
}
