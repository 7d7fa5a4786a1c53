package tailscaled

import (
	"net"
	"net/netip"
	"slices"
	"sync"
)

// multiListener accepts from several listeners (one per tailnet address)
// as one, and drops connections from this machine's own stack (see
// fromSelf). Its Addr is the first one's.
type multiListener struct {
	lns    []net.Listener
	self   []netip.Addr // the node's tailnet addresses
	conns  chan net.Conn
	done   chan struct{}
	closed sync.Once
	wg     sync.WaitGroup
	errMu  sync.Mutex
	err    error // the first accept error; guarded by errMu
}

func newMultiListener(lns []net.Listener, self []netip.Addr) *multiListener {
	m := &multiListener{lns: lns, self: self, conns: make(chan net.Conn), done: make(chan struct{})}
	for _, ln := range lns {
		m.wg.Add(1)
		go m.accept(ln)
	}
	return m
}

// accept hands ln's connections to Accept until ln fails.
func (m *multiListener) accept(ln net.Listener) {
	defer m.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			m.errMu.Lock()
			if m.err == nil {
				m.err = err
			}
			m.errMu.Unlock()
			m.stop() // one address failing stops them all, as one listener would
			return
		}
		if m.fromSelf(c) {
			c.Close()
			continue
		}
		select {
		case m.conns <- c:
		case <-m.done:
			c.Close()
			return
		}
	}
}

// fromSelf reports whether c comes from this machine's own stack rather
// than through tailscaled. The kernel delivers a local connection to a
// socket bound to the tailnet interface too, and one from the node's own
// tailnet address would be the node itself to WhoIs. No peer can hold
// those addresses (tailscaled drops a peer's packets from addresses that
// are not its own), and none is on loopback.
func (m *multiListener) fromSelf(c net.Conn) bool {
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		return true
	}
	ip := ap.Addr().Unmap()
	return ip.IsLoopback() || slices.Contains(m.self, ip)
}

// Accept returns the next connection on any of the addresses.
func (m *multiListener) Accept() (net.Conn, error) {
	select {
	case c := <-m.conns:
		return c, nil
	case <-m.done:
		m.errMu.Lock()
		defer m.errMu.Unlock()
		if m.err != nil {
			return nil, m.err
		}
		return nil, net.ErrClosed
	}
}

// Close closes every address and waits for their accept loops. A second
// Close returns net.ErrClosed.
func (m *multiListener) Close() error {
	first := m.stop()
	m.wg.Wait()
	if !first {
		return net.ErrClosed
	}
	return nil
}

// stop closes every address once; it reports whether this call did.
func (m *multiListener) stop() bool {
	first := false
	m.closed.Do(func() {
		first = true
		close(m.done)
		for _, ln := range m.lns {
			ln.Close()
		}
	})
	return first
}

// Addr is the first address's.
func (m *multiListener) Addr() net.Addr { return m.lns[0].Addr() }
