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
// (from loopback, from the node's own tailnet addresses, which WhoIs
// would call the node itself, and from any address held here).
//
// Listeners follow tailscaled: when its node's addresses change (a new
// login), they move to the new ones on the same port.
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
	"github.com/gpumesh/gpumesh/overlay/tcpcc"
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
	// Logf receives what the node does on its own: following tailscaled's
	// addresses when they change. nil discards it.
	Logf func(format string, args ...any)
}

// Node is gpumesh on the system's tailnet node.
type Node struct {
	cfg Config
	lc  *local.Client

	// Set by Up.
	self      *ipnstate.PeerStatus
	ifname    string // the TUN interface holding the node's addresses
	congction string // what gpumesh's sockets ask for; "" leaves the default

	mu         sync.Mutex
	closed     bool                          // guarded by mu
	addrs      []netip.Addr                  // guarded by mu; tailscaled's, followed (listen.go)
	listeners  map[*trackedListener]struct{} // guarded by mu; closed by Close
	stopFollow func()                        // guarded by mu; set by Up
}

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
		listeners: make(map[*trackedListener]struct{})}, nil
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
	cc, err := tcpcc.Choose(n.cfg.Congestion)
	if err != nil {
		return nil, fmt.Errorf("tailscaled overlay: %w", err)
	}
	n.self, n.ifname, n.congction = st.Self, ifname, cc
	n.mu.Lock()
	n.addrs = slices.Clone(st.Self.TailscaleIPs)
	n.mu.Unlock()
	if err := n.follow(); err != nil {
		return nil, fmt.Errorf("tailscaled at %s: %w", n.cfg.Socket, err)
	}
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

var errNotUp = errors.New("tailscaled overlay: used before Up")

func (n *Node) up() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case n.closed:
		return net.ErrClosed
	case n.self == nil:
		return errNotUp
	}
	return nil
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

// Addrs returns the node's tailnet addresses: tailscaled's, as they are
// now. Valid after Up.
func (n *Node) Addrs() []netip.Addr {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.addrs)
}

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

// Usable reports whether a tailscaled that Up would accept answers at
// socket (running, with a TUN interface), asking it once within ctx.
func Usable(ctx context.Context, socket string) bool {
	lc := &local.Client{Socket: socket, UseSocketOnly: true}
	st, err := lc.Status(ctx)
	return err == nil && st.TUN && st.BackendState == ipn.Running.String() && st.Self != nil && len(st.Self.TailscaleIPs) > 0
}

// LocalSocket is tailscaled's LocalAPI socket.
func (n *Node) LocalSocket() string { return n.cfg.Socket }

// LocalClient returns the client for tailscaled's LocalAPI.
func (n *Node) LocalClient() *local.Client { return n.lc }

// Close stops following tailscaled and closes the node's listeners;
// tailscaled and the connections already accepted stay. A second Close
// returns net.ErrClosed.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return net.ErrClosed
	}
	n.closed = true
	lns := n.listeners
	n.listeners = nil
	stop := n.stopFollow
	n.mu.Unlock()
	if stop != nil {
		stop()
	}
	for ln := range lns {
		ln.m.Close()
	}
	return nil
}
