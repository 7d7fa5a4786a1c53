package wg

import (
	"context"
	"net"
	"net/netip"

	"github.com/gpumesh/gpumesh/overlay/internal/merge"
	"github.com/gpumesh/gpumesh/overlay/tcpcc"
)

// listenKernel listens on each of addrs at port on the host's stack (ModeTUN)
// and returns one listener for them all. Binding to the overlay addresses,
// not the wildcard, keeps the listener off the host's other interfaces.
func (n *Node) listenKernel(addrs []netip.Addr, port uint16) (net.Listener, error) {
	lc := net.ListenConfig{Control: tcpcc.Control(n.cc)} // accepted connections inherit it
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
		ln = merge.Listeners(lns, nil)
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
