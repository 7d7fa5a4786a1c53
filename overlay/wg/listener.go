package wg

import (
	"context"
	"net"
	"net/netip"
	"sync"
)

// listenKernel listens on each of addrs at port on the host's stack (ModeTUN)
// and returns one listener for them all. Binding to the overlay addresses,
// not the wildcard, keeps the listener off the host's other interfaces.
func (n *Node) listenKernel(addrs []netip.Addr, port uint16) (net.Listener, error) {
	var lc net.ListenConfig
	var lns []net.Listener
	for _, a := range addrs {
		ln, err := lc.Listen(context.Background(), "tcp", netip.AddrPortFrom(a, port).String())
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, err
		}
		lns = append(lns, ln)
		if port == 0 {
			// One port for all addresses: the one the kernel chose first.
			port = uint16(ln.Addr().(*net.TCPAddr).Port)
		}
	}
	var ln net.Listener
	if len(lns) == 1 {
		ln = lns[0]
	} else {
		ln = newMultiListener(lns)
	}
	t := &trackedListener{Listener: ln, n: n}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		ln.Close()
		return nil, net.ErrClosed
	}
	if n.listeners == nil {
		n.listeners = map[*trackedListener]struct{}{}
	}
	n.listeners[t] = struct{}{}
	return t, nil
}

// trackedListener forgets itself in its Node when closed, so that Node.Close
// closes only listeners still open.
type trackedListener struct {
	net.Listener
	n *Node
}

func (t *trackedListener) Close() error {
	t.n.mu.Lock()
	delete(t.n.listeners, t)
	t.n.mu.Unlock()
	return t.Listener.Close()
}

// multiListener merges several listeners into one. It owns one accept
// goroutine per listener; Close stops them and waits.
type multiListener struct {
	lns   []net.Listener
	conns chan acceptResult
	done  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

type acceptResult struct {
	c   net.Conn
	err error
}

func newMultiListener(lns []net.Listener) *multiListener {
	m := &multiListener{lns: lns, conns: make(chan acceptResult), done: make(chan struct{})}
	for _, ln := range lns {
		m.wg.Add(1)
		go m.acceptLoop(ln)
	}
	return m
}

func (m *multiListener) acceptLoop(ln net.Listener) {
	defer m.wg.Done()
	for {
		c, err := ln.Accept()
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

func (m *multiListener) Accept() (net.Conn, error) {
	select {
	case r := <-m.conns:
		return r.c, r.err
	case <-m.done:
		return nil, net.ErrClosed
	}
}

func (m *multiListener) Close() error {
	err := net.ErrClosed
	m.once.Do(func() {
		err = nil
		close(m.done)
		for _, ln := range m.lns {
			ln.Close()
		}
		m.wg.Wait()
	})
	return err
}

// Addr returns the first listener's address.
func (m *multiListener) Addr() net.Addr { return m.lns[0].Addr() }
