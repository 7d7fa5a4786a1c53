// Package merge makes one net.Listener of several: an overlay node that
// listens on the host's kernel stack binds each of its overlay addresses
// (IPv4 and IPv6) on its own socket, and callers want one listener. The
// set can be replaced while the listener runs, when the node's addresses
// change.
package merge

import (
	"net"
	"sync"
)

// Listener accepts from several listeners as one. It owns one accept
// goroutine per listener; Close stops them and waits. Its Addr is the
// first current listener's.
type Listener struct {
	drop  func(net.Conn) bool
	conns chan acceptResult
	done  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup

	mu  sync.Mutex
	cur []*member // guarded by mu
}

// member is one listener and the signal that it was replaced, after
// which its accept error is expected and not the caller's.
type member struct {
	ln      net.Listener
	retired chan struct{}
}

type acceptResult struct {
	c   net.Conn
	err error
}

// Listeners merges lns. drop, if set, is asked about each accepted
// connection; one it reports is closed at once and never returned.
func Listeners(lns []net.Listener, drop func(net.Conn) bool) *Listener {
	m := &Listener{drop: drop, conns: make(chan acceptResult), done: make(chan struct{})}
	m.cur = m.start(lns)
	return m
}

// start runs an accept goroutine for each of lns.
func (m *Listener) start(lns []net.Listener) []*member {
	out := make([]*member, len(lns))
	for i, ln := range lns {
		out[i] = &member{ln: ln, retired: make(chan struct{})}
		m.wg.Add(1)
		go m.acceptLoop(out[i])
	}
	return out
}

func (m *Listener) acceptLoop(e *member) {
	defer m.wg.Done()
	for {
		c, err := e.ln.Accept()
		if err == nil && m.drop != nil && m.drop(c) {
			c.Close()
			continue
		}
		if err != nil {
			select {
			case <-e.retired: // replaced: its end is no error of the merged listener
				return
			default:
			}
		}
		select {
		case m.conns <- acceptResult{c, err}:
		case <-m.done:
			if c != nil {
				c.Close()
			}
			return
		}
		if err != nil {
			return
		}
	}
}

// Replace makes lns the listeners, and closes the ones before them;
// connections they accepted stay open. After Close it closes lns.
func (m *Listener) Replace(lns []net.Listener) {
	m.mu.Lock()
	select {
	case <-m.done:
		m.mu.Unlock()
		for _, ln := range lns {
			ln.Close()
		}
		return
	default:
	}
	old := m.cur
	m.cur = m.start(lns)
	m.mu.Unlock()
	for _, e := range old {
		close(e.retired)
		e.ln.Close()
	}
}

// Accept returns the next connection on any of the listeners, or the
// error one of them failed with.
func (m *Listener) Accept() (net.Conn, error) {
	select {
	case r := <-m.conns:
		return r.c, r.err
	case <-m.done:
		return nil, net.ErrClosed
	}
}

// Close closes every listener and waits for their accept goroutines. A
// second Close returns net.ErrClosed.
func (m *Listener) Close() error {
	err := net.ErrClosed
	m.once.Do(func() {
		err = nil
		m.mu.Lock()
		close(m.done)
		cur := m.cur
		m.mu.Unlock()
		for _, e := range cur {
			e.ln.Close()
		}
		m.wg.Wait()
	})
	return err
}

// Addr returns the first current listener's address.
func (m *Listener) Addr() net.Addr {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cur[0].ln.Addr()
}
