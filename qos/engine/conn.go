package engine

import (
	"net"
	"sync"

	"github.com/gpumesh/gpumesh/dscp"
	"github.com/gpumesh/gpumesh/policy"
	"github.com/gpumesh/gpumesh/qos"
)

// Conn schedules a caller's connection's writes in the caller's class
// under the policy in force and marks its inner packets with the class's
// DSCP; a new policy moves it to the caller's new class. The connection it
// returns has SetClass(string), which gpusvc calls with each call's class,
// and is forgotten when it closes.
func (e *Engine) Conn(c net.Conn, caller policy.Subject) net.Conn {
	class, code := e.cfg.Policy.Current().ClassOf(caller)
	// The inner packets carry the class too: the far end's stack and,
	// in the WireGuard TUN mode, the kernel see it. Before wrapping:
	// the scheduler's Conn hides the connection underneath.
	e.markInner(c, code)
	lc := &liveConn{Conn: e.sched.Conn(c, class), raw: c, caller: caller, e: e, class: class, dscp: code}
	e.mu.Lock()
	e.conns[lc] = true
	e.mu.Unlock()
	return lc
}

func (e *Engine) markInner(c net.Conn, code dscp.Code) {
	if err := qos.SetConnDSCP(c, code); err != nil {
		e.innerOnce.Do(func() { e.log.Info("no inner DSCP on the overlay's connections", "err", err) })
	}
}

// reclassify moves every live connection to its caller's class under pol.
func (e *Engine) reclassify(pol *policy.Policy) {
	e.mu.Lock()
	conns := make([]*liveConn, 0, len(e.conns))
	for c := range e.conns {
		conns = append(conns, c)
	}
	e.mu.Unlock()
	for _, c := range conns {
		class, _ := pol.ClassOf(c.caller)
		c.SetClass(class)
	}
}

// liveConn is a caller's connection as the engine holds it: its writes
// scheduled in its class, its inner packets marked with the class's DSCP,
// and known to the engine until it closes, so a new policy reaches it.
type liveConn struct {
	net.Conn // the scheduler's
	raw      net.Conn
	caller   policy.Subject
	e        *Engine

	mu    sync.Mutex
	class string    // as last set; guarded by mu
	dscp  dscp.Code // marked on raw; guarded by mu
}

// SetClass moves the connection to the class name ("" or a class the
// policy lacks: the default class): its next replies are scheduled and
// counted there, and its packets carry that class's DSCP.
func (c *liveConn) SetClass(name string) {
	code := c.e.sched.Class(name).DSCP
	c.mu.Lock()
	defer c.mu.Unlock()
	if name == c.class && code == c.dscp {
		return
	}
	c.Conn.(interface{ SetClass(string) }).SetClass(name)
	if code != c.dscp {
		c.e.markInner(c.raw, code)
	}
	c.class, c.dscp = name, code
}

func (c *liveConn) Close() error {
	c.e.mu.Lock()
	delete(c.e.conns, c)
	c.e.mu.Unlock()
	return c.Conn.Close()
}
