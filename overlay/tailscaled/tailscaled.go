// Package tailscaled is the system tailnet overlay: gpumesh on a machine
// whose own tailscaled already runs, with a kernel TUN interface
// (tailscale0). gpumesh joins nothing itself. It listens and dials with
// the kernel's sockets on the tailnet addresses, and asks tailscaled's
// LocalAPI who is on the other end of each connection.
//
// The data path is the kernel's TCP instead of the userspace TCP of an
// embedded node (overlay/tsnet). gVisor's TCP has only Reno and CUBIC,
// which read random loss as congestion. Linux also has BBR. Over a lossy
// WAN that is the difference between a few percent of the link and most
// of it (e2e/wan/RESULTS.md). So gpumesh's own sockets ask for BBR where
// the kernel allows it (Config.Congestion).
//
// A listener is bound to the tailnet interface (SO_BINDTODEVICE), so no
// packet from another machine reaches it except through tailscaled, which
// checks that each packet's source address belongs to the peer that sent
// it: WhoIs of the remote address is the peer. The kernel still delivers
// connections from this machine's own stack; the listener drops those
// from loopback and from the node's own tailnet addresses (which WhoIs
// would call the node itself), and WhoIs knows no other local address.
package tailscaled

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"tailscale.com/client/local"
	"tailscale.com/ipn"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/paths"

	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/overlay/internal/localapi"
	"github.com/gpumesh/gpumesh/overlay/internal/merge"
)

// DefaultSocket is where tailscaled's LocalAPI listens by default on
// this platform.
func DefaultSocket() string { return paths.DefaultTailscaledSocket() }

// Config says which tailscaled to use and how gpumesh's sockets behave.
type Config struct {
	// Socket is tailscaled's LocalAPI socket; empty means DefaultSocket.
	Socket string
	// Congestion is the TCP congestion control of gpumesh's connections:
	// "" picks BBR where the kernel offers and allows it, else leaves the
	// system default; "system" always leaves the system default; any other
	// name ("bbr", "cubic") is required, and Up fails if the kernel
	// refuses it.
	Congestion string
}

// Node is gpumesh on the system's tailnet node.
type Node struct {
	cfg Config
	lc  *local.Client

	// Set by Up.
	self      *ipnstate.PeerStatus
	addrs     []netip.Addr
	ifname    string // the TUN interface holding addrs
	congction string // what gpumesh's sockets ask for; "" leaves the default

	mu        sync.Mutex
	closed    bool                // guarded by mu
	listeners map[closer]struct{} // guarded by mu; closed by Close
}

// closer is what Close closes: the node's listeners.
type closer interface{ Close() error }

var (
	_ overlay.Overlay    = (*Node)(nil)
	_ overlay.PeerLister = (*Node)(nil)
	_ overlay.PeerPather = (*Node)(nil)
)

// New prepares a node for the tailscaled at cfg.Socket. Call Up.
func New(cfg Config) (*Node, error) {
	if cfg.Socket == "" {
		cfg.Socket = DefaultSocket()
	}
	return &Node{cfg: cfg, lc: &local.Client{Socket: cfg.Socket, UseSocketOnly: true},
		listeners: make(map[closer]struct{})}, nil
}

// Up waits until tailscaled is running on the tailnet, then learns the
// node's tailnet addresses and the interface that holds them. It fails at
// once, saying what to do, when tailscaled needs a login, is stopped, or
// runs without a TUN interface (userspace networking), where its tailnet
// addresses are not on this machine's network stack.
func (n *Node) Up(ctx context.Context) (*ipnstate.Status, error) {
	w, err := n.lc.WatchIPNBus(ctx, ipn.NotifyInitialState)
	if err != nil {
		return nil, fmt.Errorf("tailscaled at %s: %w (is tailscaled running, and may this user use its socket?)", n.cfg.Socket, err)
	}
	for running := false; !running; {
		nt, err := w.Next()
		if err != nil {
			w.Close()
			return nil, fmt.Errorf("tailscaled at %s: waiting for it to run: %w", n.cfg.Socket, err)
		}
		if nt.State == nil {
			continue
		}
		switch *nt.State {
		case ipn.Running:
			running = true
		case ipn.NeedsLogin, ipn.NeedsMachineAuth, ipn.Stopped, ipn.NoState:
			w.Close()
			return nil, fmt.Errorf("tailscaled at %s is %v: run `tailscale up` first", n.cfg.Socket, *nt.State)
		}
	}
	w.Close()
	st, err := n.lc.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("tailscaled at %s: status: %w", n.cfg.Socket, err)
	}
	if !st.TUN {
		return nil, fmt.Errorf("tailscaled at %s runs userspace networking (no TUN interface): its tailnet addresses are not on this machine's network stack; run tailscaled with a TUN, or let gpumesh join the tailnet itself (--control-url)", n.cfg.Socket)
	}
	if st.Self == nil || len(st.Self.TailscaleIPs) == 0 {
		return nil, fmt.Errorf("tailscaled at %s has no tailnet address yet", n.cfg.Socket)
	}
	ifname, err := interfaceOf(st.Self.TailscaleIPs)
	if err != nil {
		return nil, fmt.Errorf("tailscaled at %s: %w", n.cfg.Socket, err)
	}
	cc, err := chooseCongestion(n.cfg.Congestion)
	if err != nil {
		return nil, fmt.Errorf("tailscaled overlay: %w", err)
	}
	n.self, n.addrs, n.ifname, n.congction = st.Self, slices.Clone(st.Self.TailscaleIPs), ifname, cc
	return st, nil
}

// interfaceOf names the interface that holds one of addrs.
func interfaceOf(addrs []netip.Addr) (string, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return "", fmt.Errorf("list interfaces: %w", err)
	}
	for _, ifc := range ifs {
		as, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range as {
			if p, err := netip.ParsePrefix(a.String()); err == nil && slices.Contains(addrs, p.Addr().Unmap()) {
				return ifc.Name, nil
			}
		}
	}
	return "", fmt.Errorf("no interface holds the tailnet addresses %v", addrs)
}

func (n *Node) up() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case n.closed:
		return net.ErrClosed
	case n.self == nil:
		return errors.New("tailscaled overlay: used before Up")
	}
	return nil
}

// Listen listens on the node's tailnet addresses only: addr ":port" on
// each of them, or "ip:port" on one. network is "tcp", "tcp4" or "tcp6".
func (n *Node) Listen(network, addr string) (net.Listener, error) {
	if err := n.up(); err != nil {
		return nil, err
	}
	ips, port, err := n.localAddrs(network, addr)
	if err != nil {
		return nil, err
	}
	lc := net.ListenConfig{Control: n.controlListen}
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
	ln := merge.Listeners(lns, func(c net.Conn) bool { return fromSelf(n.addrs, c) })
	if !n.track(ln) {
		ln.Close()
		return nil, net.ErrClosed
	}
	return &trackedListener{Listener: ln, n: n}, nil
}

// ListenPacket listens for UDP on the node's tailnet address addr
// ("ip:port"; the IP is required), bound to the tailnet interface.
func (n *Node) ListenPacket(network, addr string) (net.PacketConn, error) {
	if err := n.up(); err != nil {
		return nil, err
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !slices.Contains(n.addrs, ap.Addr()) {
		return nil, fmt.Errorf("tailscaled overlay: listen packet on %q: want one of this node's tailnet addresses %v with a port", addr, n.addrs)
	}
	lc := net.ListenConfig{Control: n.controlDevice}
	return lc.ListenPacket(context.Background(), network, addr)
}

// localAddrs resolves a listen address to the node's tailnet addresses
// and a port.
func (n *Node) localAddrs(network, addr string) ([]netip.Addr, uint16, error) {
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, 0, fmt.Errorf("tailscaled overlay: listen on %q: %w", addr, err)
	}
	var port uint16
	if _, err := fmt.Sscan(ps, &port); err != nil {
		return nil, 0, fmt.Errorf("tailscaled overlay: listen on %q: bad port", addr)
	}
	var ips []netip.Addr
	for _, a := range n.addrs {
		if (network == "tcp4" && !a.Is4()) || (network == "tcp6" && !a.Is6()) {
			continue
		}
		if host == "" || host == a.String() {
			ips = append(ips, a)
		}
	}
	switch {
	case network != "tcp" && network != "tcp4" && network != "tcp6":
		return nil, 0, fmt.Errorf("tailscaled overlay: listen on %s: want tcp", network)
	case len(ips) == 0:
		return nil, 0, fmt.Errorf("tailscaled overlay: listen on %q: not this node's tailnet address (%v)", addr, n.addrs)
	}
	return ips, port, nil
}

// Dial connects to addr ("host:port") on the tailnet. The host is a
// peer's name (the first label of its MagicDNS name, or the whole name),
// or a tailnet address; names are resolved from tailscaled's netmap, not
// from the system's DNS.
func (n *Node) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if err := n.up(); err != nil {
		return nil, err
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("tailscaled overlay: dial %q: %w", addr, err)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		if ip, err = n.resolve(ctx, host, network); err != nil {
			return nil, err
		}
	}
	d := net.Dialer{Control: n.control}
	return d.DialContext(ctx, network, net.JoinHostPort(ip.String(), port))
}

// resolve finds the peer named host in tailscaled's netmap.
func (n *Node) resolve(ctx context.Context, host, network string) (netip.Addr, error) {
	st, err := n.lc.Status(ctx)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("tailscaled overlay: resolve %s: %w", host, err)
	}
	name := strings.TrimSuffix(strings.ToLower(host), ".")
	for _, ps := range st.Peer {
		p := localapi.PeerOf(ps)
		if !strings.EqualFold(p.Name, name) && !strings.EqualFold(p.FQDN, name) {
			continue
		}
		for _, a := range p.Addrs {
			if (network == "tcp6" && a.Is6()) || (network != "tcp6" && a.Is4()) {
				return a, nil
			}
		}
		if len(p.Addrs) > 0 && network == "tcp" {
			return p.Addrs[0], nil
		}
	}
	return netip.Addr{}, fmt.Errorf("tailscaled overlay: no peer named %q on the tailnet", host)
}

// WhoIs asks tailscaled who holds remoteAddr.
func (n *Node) WhoIs(ctx context.Context, remoteAddr string) (overlay.Identity, error) {
	id, err := localapi.WhoIs(ctx, n.lc, remoteAddr)
	if err != nil && !errors.Is(err, overlay.ErrUnknownPeer) {
		err = fmt.Errorf("tailscaled overlay: %w", err)
	}
	return id, err
}

// Peers lists tailscaled's peers from its netmap.
func (n *Node) Peers(ctx context.Context) ([]overlay.Peer, error) {
	ps, err := localapi.Peers(ctx, n.lc)
	if err != nil {
		return nil, fmt.Errorf("tailscaled overlay: %w", err)
	}
	return ps, nil
}

// PeerPaths reports each peer's tailnet address and, when the path to it
// is direct, its WireGuard endpoint.
func (n *Node) PeerPaths(ctx context.Context) ([]overlay.PeerPath, error) {
	pp, err := localapi.PeerPaths(ctx, n.lc)
	if err != nil {
		return nil, fmt.Errorf("tailscaled overlay: %w", err)
	}
	return pp, nil
}

// Addrs returns the node's tailnet addresses. Valid after Up.
func (n *Node) Addrs() []netip.Addr { return slices.Clone(n.addrs) }

// Hostname returns the node's name on the tailnet. Valid after Up.
func (n *Node) Hostname() string {
	if n.self == nil {
		return ""
	}
	name, _, _ := strings.Cut(strings.TrimSuffix(n.self.DNSName, "."), ".")
	if name == "" {
		name = n.self.HostName
	}
	return name
}

// Interface names the TUN interface gpumesh's listeners are bound to.
// Valid after Up.
func (n *Node) Interface() string { return n.ifname }

// Congestion is the congestion control gpumesh's connections ask for;
// "" means the system default. Valid after Up.
func (n *Node) Congestion() string { return n.congction }

// LocalSocket is tailscaled's LocalAPI socket.
func (n *Node) LocalSocket() string { return n.cfg.Socket }

// LocalClient returns the client for tailscaled's LocalAPI.
func (n *Node) LocalClient() *local.Client { return n.lc }

// Close closes the node's listeners; tailscaled and the connections
// already accepted stay. A second Close returns net.ErrClosed.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return net.ErrClosed
	}
	n.closed = true
	lns := n.listeners
	n.listeners = nil
	n.mu.Unlock()
	for ln := range lns {
		ln.Close()
	}
	return nil
}

// track records a listener for Close; false once the node is closed.
func (n *Node) track(c closer) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return false
	}
	n.listeners[c] = struct{}{}
	return true
}

func (n *Node) untrack(c closer) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.listeners, c)
}

// trackedListener forgets itself in its node when closed.
type trackedListener struct {
	*merge.Listener
	n *Node
}

func (l *trackedListener) Close() error {
	l.n.untrack(l.Listener)
	return l.Listener.Close()
}
