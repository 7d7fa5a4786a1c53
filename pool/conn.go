package pool

import (
	"context"
	"fmt"
	"net"
	"sync"
)

// DialContext places a new connection on a host of the pool and connects
// it to that host's endpoint. network must be "tcp"; addr is not used (the
// pool picks the host), so DialContext can stand in for an overlay's Dial
// in a forwarder (forward.Config.Dial) whose rule names the pool. Hosts
// must allow this node Config.ConnKernels (or any built-in); among them
// the one with the fewest of this pool's calls, sessions and connections
// (then the lowest estimate) gets it. When the dial fails, another host is
// tried once: nothing was sent. The connection is closed when its host is
// lost, so its client reconnects (through the forwarder: to another host).
func (p *Pool) DialContext(ctx context.Context, network, _ string) (net.Conn, error) {
	if network != "tcp" && network != "tcp4" && network != "tcp6" {
		return nil, fmt.Errorf("pool %s: dial %s: only tcp", p.target, network)
	}
	w := work{what: "a connection", kernels: p.cfg.ConnKernels, any: len(p.cfg.ConnKernels) == 0, gpu: p.cfg.GPU}
	var first error
	for attempt := 0; ; attempt++ {
		l, err := p.place(ctx, w)
		if err != nil {
			if first != nil {
				return nil, fmt.Errorf("%w; then %v", first, err)
			}
			return nil, err
		}
		c, err := l.h.dialTracked(ctx, l)
		if err == nil {
			return c, nil
		}
		l.h.suspect(err)
		err = fmt.Errorf("pool %s: dial %s: %w", p.target, l.h.name, err)
		if attempt > 0 || ctx.Err() != nil {
			if first != nil {
				err = fmt.Errorf("%w; then %w", first, err)
			}
			return nil, err
		}
		first = err
		w.exclude = append(w.exclude, l.h.name)
	}
}

// DialHost connects to the endpoint of the member named name, if it is
// ready. The connection is closed when the host is lost.
func (p *Pool) DialHost(ctx context.Context, name string) (net.Conn, error) {
	h, ok := p.lookup(name)
	if !ok {
		return nil, fmt.Errorf("pool %s: no member %q", p.target, name)
	}
	l, ok := h.acquire()
	if !ok {
		return nil, fmt.Errorf("pool %s: %s is %v", p.target, name, h.info().State)
	}
	c, err := h.dialTracked(ctx, l)
	if err != nil {
		return nil, fmt.Errorf("pool %s: dial %s: %w", p.target, name, err)
	}
	return c, nil
}

// dialTracked dials h's endpoint under lease l (released here) and tracks
// the connection until it is closed, or h is lost.
func (h *host) dialTracked(ctx context.Context, l lease) (net.Conn, error) {
	h.mu.Lock()
	addr := h.addr
	h.mu.Unlock()
	c, err := h.p.dial(ctx, "tcp", addr)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.outstanding--
	if err != nil {
		return nil, err
	}
	if h.gen != l.gen || h.client == nil {
		c.Close()
		return nil, fmt.Errorf("%w: %s", ErrHostLost, h.name)
	}
	tc := &trackedConn{Conn: c, h: h}
	h.conns[tc] = struct{}{}
	return tc, nil
}

// trackedConn is a connection placed on a host; closing it stops counting
// it there.
type trackedConn struct {
	net.Conn
	h    *host
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.h.mu.Lock()
		delete(c.h.conns, c)
		c.h.mu.Unlock()
	})
	return c.Conn.Close()
}

// CloseWrite passes a half-close on, where the overlay's connection has it.
func (c *trackedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}
