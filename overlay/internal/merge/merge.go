// Package merge makes one net.Listener of several: an overlay node that
// listens on the host's kernel stack binds each of its overlay addresses
// (IPv4 and IPv6) on its own socket, and callers want one listener.
package merge

import (
	"net"
	"sync"
)

// Listener accepts from several listeners as one. It owns one accept
// goroutine per listener; Close stops them and waits. Its Addr is the
// first listener's.
type Listener struct {
	lns   []net.Listener
	drop  func(net.Conn) bool
	conns chan acceptResult
	done  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

type acceptResult struct {
	c   net.Conn
	err error
}

// Listeners merges lns. drop, if set, is asked about each accepted
// connection; one it reports is closed at once and never returned.
func Listeners(lns []net.Listener, drop func(net.Conn) bool) *Listener {
	m := &Listener{lns: lns, drop: drop, conns: make(chan acceptResult), done: make(chan struct{})}
	for _, ln := range lns {
		m.wg.Add(1)
		go m.acceptLoop(ln)
	}
	return m
}

func (m *Listener) acceptLoop(ln net.Listener) {
	defer m.wg.Done()
	for {
		c, err := ln.Accept()
		if err == nil && m.drop != nil && m.drop(c) {
			c.Close()
			continue
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
		close(m.done)
		for _, ln := range m.lns {
			ln.Close()
		}
		m.wg.Wait()
	})
	return err
}

// Addr returns the first listener's address.
func (m *Listener) Addr() net.Addr { return m.lns[0].Addr() }
