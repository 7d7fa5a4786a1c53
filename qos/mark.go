package qos

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/gpumesh/gpumesh/dscp"
)

// MarkerConfig configures a Marker. The zero value marks nothing useful:
// Port is required.
type MarkerConfig struct {
	// Port is the local UDP port of the sockets to mark (tsnet's fixed
	// Server.Port, for instance).
	Port uint16
	// DSCP is the code point to set; dscp.None means AF41. CS0 (best
	// effort) is a code point like any other.
	DSCP dscp.Code
	// Interval is how often the marking is re-applied, catching sockets
	// opened by a rebind; default 5s.
	Interval time.Duration
	// Logf, if set, receives a line whenever the number of marked sockets
	// changes or marking fails.
	Logf func(format string, args ...any)
}

// Marker keeps this process's UDP sockets on one port marked with a DSCP:
// it re-applies dscp.MarkUDPPort every Interval and whenever Mark is called
// (the node calls it after the overlay rebinds). Marking needs no
// privilege.
type Marker struct {
	cfg MarkerConfig

	mu      sync.Mutex
	status  MarkerStatus       // guarded by mu
	cancel  context.CancelFunc // set by Start; guarded by mu
	started bool               // guarded by mu
	closed  bool               // guarded by mu
	wg      sync.WaitGroup     // the re-marking goroutine

	applied func(n int) // test hook, called after each periodic pass
}

// MarkerStatus is what the Marker last did.
type MarkerStatus struct {
	Port    uint16
	DSCP    dscp.Code
	Sockets int       // sockets marked in the last pass
	At      time.Time // time of the last pass; zero before the first
	Err     error     // error of the last pass
}

// NewMarker returns a Marker for cfg; call Start to run it.
func NewMarker(cfg MarkerConfig) *Marker {
	if cfg.DSCP == dscp.None {
		cfg.DSCP = dscp.AF41
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 5 * time.Second
	}
	return &Marker{cfg: cfg, status: MarkerStatus{Port: cfg.Port, DSCP: cfg.DSCP}}
}

// Start marks once and starts re-marking every Interval until ctx ends or
// Close is called. It fails if the Marker was started or closed before.
func (m *Marker) Start(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return fmt.Errorf("qos: marker start: %w", net.ErrClosed)
	}
	if m.started {
		return errors.New("qos: marker start: already started")
	}
	m.started = true
	ctx, m.cancel = context.WithCancel(ctx)
	m.wg.Add(1)
	go m.run(ctx)
	return nil
}

func (m *Marker) run(ctx context.Context) {
	defer m.wg.Done()
	t := time.NewTicker(m.cfg.Interval)
	defer t.Stop()
	for {
		n, _ := m.Mark()
		if m.applied != nil {
			m.applied(n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Mark applies the marking now and returns how many sockets carry it.
func (m *Marker) Mark() (int, error) {
	n, err := dscp.MarkUDPPort(m.cfg.Port, m.cfg.DSCP, nil)
	m.mu.Lock()
	defer m.mu.Unlock()
	prev := m.status
	m.status.Sockets, m.status.Err, m.status.At = n, err, time.Now()
	if m.cfg.Logf != nil {
		switch {
		case err != nil && (prev.Err == nil || prev.Err.Error() != err.Error()):
			m.cfg.Logf("qos: marking udp port %d: %v", m.cfg.Port, err)
		case n != prev.Sockets || prev.At.IsZero():
			m.cfg.Logf("qos: udp port %d: %d socket(s) marked DSCP %s", m.cfg.Port, n, m.cfg.DSCP)
		}
	}
	return n, err
}

// Status reports the last pass.
func (m *Marker) Status() MarkerStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.status
}

// Close stops the re-marking goroutine and waits for it. The sockets keep
// their marking. A second Close returns net.ErrClosed.
func (m *Marker) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return net.ErrClosed
	}
	m.closed = true
	cancel := m.cancel
	m.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	m.wg.Wait()
	return nil
}
