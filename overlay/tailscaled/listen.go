package tailscaled

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"tailscale.com/ipn"

	"github.com/gpumesh/gpumesh/overlay/internal/merge"
)

// Listen listens on the node's tailnet addresses only: addr ":port" on
// each of them, or "ip:port" on one. network is "tcp", "tcp4" or "tcp6".
// A ":port" listener follows tailscaled: when the node's addresses change
// (a new login), it moves to the new ones on the same port.
func (n *Node) Listen(network, addr string) (net.Listener, error) {
	if err := n.up(); err != nil {
		return nil, err
	}
	if network != "tcp" && network != "tcp4" && network != "tcp6" {
		return nil, fmt.Errorf("tailscaled overlay: listen on %s: want tcp", network)
	}
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("tailscaled overlay: listen on %q: %w", addr, err)
	}
	var port uint16
	if _, err := fmt.Sscan(ps, &port); err != nil {
		return nil, fmt.Errorf("tailscaled overlay: listen on %q: bad port", addr)
	}
	var only netip.Addr
	if host != "" {
		if only, err = netip.ParseAddr(host); err != nil {
			return nil, fmt.Errorf("tailscaled overlay: listen on %q: want an IP address or none", addr)
		}
	}
	t := &trackedListener{n: n, network: network, only: only}
	lns, err := t.listen(n.Addrs(), port)
	if err != nil {
		return nil, err
	}
	t.port = uint16(lns[0].Addr().(*net.TCPAddr).Port)
	t.m = merge.Listeners(lns, func(c net.Conn) bool { return fromSelf(n.Addrs(), c) })
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		t.m.Close()
		return nil, net.ErrClosed
	}
	n.listeners[t] = struct{}{}
	return t, nil
}

// trackedListener is a listener of the node: it follows the node's
// addresses and forgets itself in its node when closed.
type trackedListener struct {
	n       *Node
	network string
	only    netip.Addr // the one address asked for; zero for all of them
	port    uint16     // set once listening
	m       *merge.Listener
}

func (t *trackedListener) Accept() (net.Conn, error) { return t.m.Accept() }
func (t *trackedListener) Addr() net.Addr            { return t.m.Addr() }

func (t *trackedListener) Close() error {
	t.n.mu.Lock()
	delete(t.n.listeners, t)
	t.n.mu.Unlock()
	return t.m.Close()
}

// listen binds the listener's addresses among addrs at port (0: the
// first one picks it), bound to the tailnet interface.
func (t *trackedListener) listen(addrs []netip.Addr, port uint16) ([]net.Listener, error) {
	var ips []netip.Addr
	for _, a := range addrs {
		if (t.network == "tcp4" && !a.Is4()) || (t.network == "tcp6" && !a.Is6()) {
			continue
		}
		if !t.only.IsValid() || t.only == a {
			ips = append(ips, a)
		}
	}
	if len(ips) == 0 {
		if t.only.IsValid() {
			return nil, fmt.Errorf("tailscaled overlay: listen on %s: not this node's tailnet address (%v)", t.only, addrs)
		}
		return nil, fmt.Errorf("tailscaled overlay: listen on %s: no tailnet address for it (%v)", t.network, addrs)
	}
	lc := net.ListenConfig{Control: t.n.controlListen}
	var lns []net.Listener
	for _, ip := range ips {
		nw := "tcp4"
		if ip.Is6() {
			nw = "tcp6"
		}
		ln, err := lc.Listen(context.Background(), nw, netip.AddrPortFrom(ip, port).String())
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, fmt.Errorf("tailscaled overlay: listen on %s: %w", ip, err)
		}
		lns = append(lns, ln)
		if port == 0 { // the other addresses take the port the first one got
			port = uint16(ln.Addr().(*net.TCPAddr).Port)
		}
	}
	return lns, nil
}

// ListenPacket listens for UDP on the node's tailnet address addr
// ("ip:port"; the IP is required), bound to the tailnet interface.
func (n *Node) ListenPacket(network, addr string) (net.PacketConn, error) {
	if err := n.up(); err != nil {
		return nil, err
	}
	ap, err := netip.ParseAddrPort(addr)
	if addrs := n.Addrs(); err != nil || !slices.Contains(addrs, ap.Addr()) {
		return nil, fmt.Errorf("tailscaled overlay: listen packet on %q: want one of this node's tailnet addresses %v with a port", addr, addrs)
	}
	lc := net.ListenConfig{Control: n.controlDevice}
	return lc.ListenPacket(context.Background(), network, addr)
}

// follow watches tailscaled until Close, and moves the node's listeners
// when its tailnet addresses change.
func (n *Node) follow() error {
	ctx, cancel := context.WithCancel(context.Background())
	w, err := n.lc.WatchIPNBus(ctx, ipn.NotifyRateLimit)
	if err != nil {
		cancel()
		return fmt.Errorf("watch: %w", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer w.Close()
		for {
			nt, err := w.Next()
			if err != nil {
				if ctx.Err() == nil {
					n.logf("tailscaled overlay: watching tailscaled at %s ended: %v; the node's addresses are no longer followed", n.cfg.Socket, err)
				}
				return
			}
			if nt.State == nil && nt.NetMap == nil {
				continue
			}
			st, err := n.lc.StatusWithoutPeers(ctx)
			if err != nil || st.BackendState != ipn.Running.String() || st.Self == nil || len(st.Self.TailscaleIPs) == 0 {
				continue // not on the tailnet now: nothing to move to
			}
			n.setAddrs(st.Self.TailscaleIPs)
		}
	}()
	n.mu.Lock()
	n.stopFollow = func() { cancel(); <-done }
	n.mu.Unlock()
	return nil
}

// setAddrs makes addrs the node's addresses and moves its listeners to
// them, each on its port. A listener that cannot move keeps its old
// addresses, and says so.
func (n *Node) setAddrs(addrs []netip.Addr) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed || slices.Equal(n.addrs, addrs) {
		return
	}
	n.logf("tailscaled overlay: the node's tailnet addresses changed from %v to %v; listeners follow", n.addrs, addrs)
	n.addrs = slices.Clone(addrs)
	for t := range n.listeners {
		if t.only.IsValid() {
			continue // asked for one address: it stays there
		}
		lns, err := t.listen(addrs, t.port)
		if err != nil {
			n.logf("tailscaled overlay: listener on port %d stays on the old addresses: %v", t.port, err)
			continue
		}
		t.m.Replace(lns)
	}
}

func (n *Node) logf(format string, args ...any) {
	if n.cfg.Logf != nil {
		n.cfg.Logf(format, args...)
	}
}

// fromSelf reports whether c comes from this machine's own stack rather
// than through tailscaled, given the node's tailnet addresses. The kernel
// delivers a local connection to a socket bound to the tailnet interface
// too, and one from the node's own tailnet address would be the node
// itself to WhoIs. A peer's packets come from its own tailnet address
// (tailscaled drops the others), which is no address of this machine's:
// so a connection from loopback, from the node's addresses or from any
// address an interface here holds is this machine's own.
func fromSelf(self []netip.Addr, c net.Conn) bool {
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		return true
	}
	ip := ap.Addr().Unmap()
	if ip.IsLoopback() || slices.Contains(self, ip) {
		return true
	}
	local, err := net.InterfaceAddrs()
	if err != nil {
		return true // cannot tell: refuse, as a listener on the overlay only should
	}
	for _, a := range local {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Unmap() == ip {
			return true
		}
	}
	return false
}
