package wg

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/gpumesh/gpumesh/dscp"
	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/overlay/tcpcc"
	"github.com/gpumesh/gpumesh/overlay/wg/wgconfig"
)

var _ overlay.Overlay = (*Node)(nil)

// ErrNotUp is returned by Listen, Dial and WhoIs before Up succeeds.
var ErrNotUp = errors.New("wg: node is not up")

// ErrNoPeer is returned by Dial for an address no peer's AllowedIPs
// contain, or a name no peer has.
var ErrNoPeer = errors.New("wg: no such peer")

// Node is a member of a static WireGuard mesh. Create it with New, start it
// with Up, and Close it when done.
type Node struct {
	cfg   Config // defaults applied; immutable after New
	file  *wgconfig.File
	peers *peerTable
	self  []netip.Prefix // own overlay addresses
	mtu   int
	logf  func(string, ...any)
	cc    string // ModeTUN: the congestion control of the node's sockets; "" the default

	mu        sync.Mutex
	up        bool                          // Up succeeded; guarded by mu
	closed    bool                          // guarded by mu
	dev       *device.Device                // guarded by mu
	tnet      stackNet                      // ModeNetstack; guarded by mu
	kernel    *kernelTUN                    // ModeTUN; guarded by mu
	listeners map[*trackedListener]struct{} // ModeTUN listeners, closed by Close; guarded by mu
}

// nodeCongestion resolves cfg.Congestion for cfg.Mode.
func nodeCongestion(cfg Config) (string, error) {
	if cfg.Mode == ModeNetstack {
		if cfg.Congestion != "" && cfg.Congestion != tcpcc.System {
			return "", fmt.Errorf("wg: config: TCP congestion control %q needs the TUN mode: netstack mode runs gVisor's TCP", cfg.Congestion)
		}
		return "", nil
	}
	cc, err := tcpcc.Choose(cfg.Congestion)
	if err != nil {
		return "", fmt.Errorf("wg: config: %w", err)
	}
	return cc, nil
}

// New validates cfg and returns a Node that is not yet up.
func New(cfg Config) (*Node, error) {
	if cfg.File == nil {
		if cfg.Path == "" {
			return nil, errors.New("wg: config: neither File nor Path set")
		}
		f, err := wgconfig.Load(cfg.Path)
		if err != nil {
			return nil, fmt.Errorf("wg: config: %w", err)
		}
		cfg.File = f
	}
	switch cfg.Mode {
	case ModeNetstack, ModeTUN:
	default:
		return nil, fmt.Errorf("wg: config: unknown mode %v", cfg.Mode)
	}
	if cfg.TUNName == "" {
		cfg.TUNName = DefaultTUNName
	}
	if len(cfg.TUNName) > 15 {
		return nil, fmt.Errorf("wg: config: TUN name %q longer than 15 bytes", cfg.TUNName)
	}
	if cfg.DSCP != dscp.None && !cfg.DSCP.Valid() {
		return nil, fmt.Errorf("wg: config: DSCP %v: %w", cfg.DSCP, dscp.ErrBad)
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	cc, err := nodeCongestion(cfg)
	if err != nil {
		return nil, err
	}
	n := &Node{
		cc:    cc,
		cfg:   cfg,
		file:  cfg.File,
		peers: newPeerTable(cfg.File),
		self:  slices.Clone(cfg.File.Interface.Addresses),
		mtu:   cfg.File.Interface.MTU,
		logf:  cfg.Logf,
	}
	if n.mtu == 0 {
		n.mtu = wgconfig.DefaultMTU
	}
	return n, nil
}

// Addrs returns the node's own overlay addresses.
func (n *Node) Addrs() []netip.Addr {
	out := make([]netip.Addr, len(n.self))
	for i, p := range n.self {
		out[i] = p.Addr()
	}
	return out
}

var _ overlay.PeerPather = (*Node)(nil)

// ipcGet returns the device's state in wireguard-go's UAPI text format,
// for what (named in the error).
func (n *Node) ipcGet(what string) (string, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case n.closed:
		return "", net.ErrClosed
	case n.dev == nil:
		return "", ErrNotUp
	}
	s, err := n.dev.IpcGet()
	if err != nil {
		return "", fmt.Errorf("wg: %s: %w", what, err)
	}
	return s, nil
}

// PeerPaths reports each peer's first overlay address (from its AllowedIPs)
// and the endpoint the device sends its packets to now: the configured
// one, or the one its last authenticated packet came from. A peer with no
// endpoint yet has none.
func (n *Node) PeerPaths(ctx context.Context) ([]overlay.PeerPath, error) {
	s, err := n.ipcGet("peer paths")
	if err != nil {
		return nil, err
	}
	var out []overlay.PeerPath
	var cur *overlay.PeerPath
	for _, line := range strings.Split(s, "\n") {
		k, v, _ := strings.Cut(line, "=")
		switch k {
		case "public_key":
			out = append(out, overlay.PeerPath{})
			cur = &out[len(out)-1]
		case "endpoint":
			if ep, err := netip.ParseAddrPort(v); err == nil && cur != nil {
				cur.Endpoint = netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port())
			}
		case "allowed_ip":
			if p, err := netip.ParsePrefix(v); err == nil && cur != nil && !cur.Addr.IsValid() {
				cur.Addr = p.Addr()
			}
		}
	}
	return slices.DeleteFunc(out, func(p overlay.PeerPath) bool { return !p.Addr.IsValid() }), nil
}

// PublicKey returns the node's public key.
func (n *Node) PublicKey() wgconfig.Key { return n.file.Interface.PrivateKey.PublicKey() }

// ListenPort returns the UDP port the node receives WireGuard packets on,
// or 0 when it is not up.
func (n *Node) ListenPort() uint16 {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.dev == nil {
		return 0
	}
	s, err := n.dev.IpcGet()
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(line, "listen_port="); ok {
			p, _ := strconv.ParseUint(v, 10, 16)
			return uint16(p)
		}
	}
	return 0
}

// Mode returns the node's data path.
func (n *Node) Mode() Mode { return n.cfg.Mode }

// Up brings the node onto the overlay: it opens the UDP socket, configures
// wireguard-go with the peers and, in ModeTUN, creates and configures the
// interface. It returns when the node can listen and dial; it does not wait
// for handshakes, which happen on first traffic (or keepalive). A failed Up
// leaves nothing behind.
func (n *Node) Up(ctx context.Context) (err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case n.closed:
		return net.ErrClosed
	case n.up:
		return errors.New("wg: up: already up")
	}
	uapi, err := n.uapiConfig(ctx)
	if err != nil {
		return err
	}
	var undo []func()
	defer func() {
		if err != nil {
			for _, f := range slices.Backward(undo) {
				f()
			}
		}
	}()

	var tdev tun.Device
	switch n.cfg.Mode {
	case ModeNetstack:
		if n.cfg.legacyNetstack {
			tdev, n.tnet, err = netstack.CreateNetTUN(n.Addrs(), nil, n.mtu)
		} else {
			var s *userStack
			s, err = newUserStack(n.Addrs(), n.mtu)
			tdev, n.tnet = s, s
		}
		if err != nil {
			return fmt.Errorf("wg: up: netstack: %w", err)
		}
		undo = append(undo, func() { n.tnet = nil })
	case ModeTUN:
		n.kernel, err = createKernelTUN(n.cfg.TUNName, n.mtu, !n.cfg.tunNoOffloads)
		if err != nil {
			return fmt.Errorf("wg: up: %w", err)
		}
		if b := n.kernel.dev.BatchSize(); b == 1 {
			n.logf("wg: warning: TUN device %s has no offloads (this kernel refused IFF_VNET_HDR or TUNSETOFFLOAD): "+
				"wireguard-go moves one packet per read and write, expect a fraction of the usual throughput", n.kernel.name)
		}
		tdev = n.kernel.dev
		k := n.kernel
		undo = append(undo, func() { k.remove(); n.kernel = nil })
	}

	tdev = newSteadyTUN(tdev)
	var bind conn.Bind = conn.NewDefaultBind()
	if n.cfg.DSCP != dscp.None {
		bind = newDSCPBind(bind, n.cfg.DSCP, n.logf)
	}
	verbosef := device.DiscardLogf
	if n.cfg.Verbose {
		verbosef = func(format string, args ...any) { n.logf("wg: "+format, args...) }
	}
	dev := device.NewDevice(tdev, bind, &device.Logger{
		Verbosef: verbosef,
		Errorf:   func(format string, args ...any) { n.logf("wg: "+format, args...) },
	})
	undo = append(undo, dev.Close) // closes tdev and bind too
	if err := dev.IpcSet(uapi); err != nil {
		return fmt.Errorf("wg: up: configure wireguard-go: %w", err)
	}
	if err := dev.Up(); err != nil {
		return fmt.Errorf("wg: up: %w", err)
	}
	if n.kernel != nil {
		if err := n.kernel.configure(n.self, n.routes()); err != nil {
			return fmt.Errorf("wg: up: %w", err)
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("wg: up: %w", err)
	}
	n.dev = dev
	n.up = true
	n.logf("wg: up in %v mode, %d peer(s), addresses %v, public key %s", n.cfg.Mode, len(n.peers.peers), n.self, n.PublicKey())
	return nil
}

// routes returns the prefixes the kernel should route into the TUN
// interface: every peer's AllowedIPs except default routes, which would
// need wg-quick's policy-routing tricks to avoid looping the tunnel's own
// packets. Table = off means none.
func (n *Node) routes() []netip.Prefix {
	if n.file.Interface.Table == "off" {
		return nil
	}
	var out []netip.Prefix
	for _, p := range n.peers.peers {
		for _, pfx := range p.prefixes {
			if pfx.Bits() == 0 {
				n.logf("wg: not routing default route %v of peer %s into the TUN interface", pfx, p.key)
				continue
			}
			out = append(out, pfx)
		}
	}
	return out
}

// uapiConfig renders the configuration in wireguard-go's UAPI format,
// resolving endpoint host names.
func (n *Node) uapiConfig(ctx context.Context) (string, error) {
	ifc := n.file.Interface
	var b strings.Builder
	fmt.Fprintf(&b, "private_key=%s\nlisten_port=%d\n", ifc.PrivateKey.Hex(), ifc.ListenPort)
	if ifc.FwMark != 0 {
		fmt.Fprintf(&b, "fwmark=%d\n", ifc.FwMark)
	}
	b.WriteString("replace_peers=true\n")
	for _, p := range n.file.Peers {
		fmt.Fprintf(&b, "public_key=%s\n", p.PublicKey.Hex())
		if !p.PresharedKey.IsZero() {
			fmt.Fprintf(&b, "preshared_key=%s\n", p.PresharedKey.Hex())
		}
		if p.Endpoint != "" {
			ep, err := resolveEndpoint(ctx, p.Endpoint)
			if err != nil {
				return "", fmt.Errorf("wg: up: peer %s: %w", peerLabel(p), err)
			}
			fmt.Fprintf(&b, "endpoint=%s\n", ep)
		}
		fmt.Fprintf(&b, "persistent_keepalive_interval=%d\nreplace_allowed_ips=true\n", p.PersistentKeepalive)
		for _, pfx := range p.AllowedIPs {
			fmt.Fprintf(&b, "allowed_ip=%s\n", pfx)
		}
	}
	return b.String(), nil
}

// Close leaves the overlay: it stops wireguard-go, closes the UDP socket
// and, in ModeTUN, removes the interface (and with it its addresses and
// routes) and closes listeners made by Listen. A second Close returns
// net.ErrClosed. It is what a SIGTERM handler should call.
func (n *Node) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return net.ErrClosed
	}
	n.closed = true
	if !n.up {
		return nil
	}
	for t := range n.listeners {
		t.Listener.Close() // not t.Close, which takes mu
	}
	n.listeners = nil
	n.dev.Close() // closes the TUN device and the bind
	var err error
	if n.kernel != nil {
		err = n.kernel.remove()
	}
	n.dev, n.tnet, n.kernel = nil, nil, nil
	if err != nil {
		return fmt.Errorf("wg: close: %w", err)
	}
	return nil
}

// state returns what Listen, Dial and WhoIs need, or ErrNotUp / net.ErrClosed.
func (n *Node) state() (stackNet, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case n.closed:
		return nil, net.ErrClosed
	case !n.up:
		return nil, ErrNotUp
	}
	return n.tnet, nil
}

// WhoIs returns the peer whose AllowedIPs contain remoteAddr's address.
// remoteAddr is "ip:port" (as net.Conn.RemoteAddr().String() gives it) or
// a bare IP.
func (n *Node) WhoIs(ctx context.Context, remoteAddr string) (overlay.Identity, error) {
	if _, err := n.state(); err != nil {
		return overlay.Identity{}, err
	}
	ip, err := parseRemote(remoteAddr)
	if err != nil {
		return overlay.Identity{}, fmt.Errorf("wg: whois %q: %w", remoteAddr, err)
	}
	// The node's own addresses are nobody's, even inside a peer's wide
	// AllowedIPs (a hub's 10.77.0.0/24): in ModeTUN a connection from this
	// host's own programs comes from them.
	if slices.Contains(n.Addrs(), ip) {
		return overlay.Identity{}, fmt.Errorf("wg: whois %s: this node's own address: %w", ip, overlay.ErrUnknownPeer)
	}
	p, ok := n.peers.lookup(ip)
	if !ok {
		return overlay.Identity{}, fmt.Errorf("wg: whois %s: %w", ip, overlay.ErrUnknownPeer)
	}
	return p.identity(), nil
}

// Listen listens for TCP connections ("tcp", "tcp4", "tcp6") on the node's
// overlay addresses only. addr is ":port" or "overlay-ip:port".
func (n *Node) Listen(network, addr string) (net.Listener, error) {
	tnet, err := n.state()
	if err != nil {
		return nil, err
	}
	addrs, port, err := n.listenAddrs(network, addr, "tcp")
	if err != nil {
		return nil, fmt.Errorf("wg: listen %s %s: %w", network, addr, err)
	}
	if n.cfg.Mode == ModeNetstack {
		// The userspace stack holds only overlay addresses, so its
		// wildcard is the overlay.
		var ap netip.AddrPort
		if len(addrs) == 1 {
			ap = netip.AddrPortFrom(addrs[0], port)
		} else {
			ap = netip.AddrPortFrom(netip.IPv6Unspecified(), port)
		}
		ln, err := tnet.ListenTCPAddrPort(ap)
		if err != nil {
			return nil, fmt.Errorf("wg: listen %s %s: %w", network, addr, err)
		}
		return ln, nil
	}
	ln, err := n.listenKernel(addrs, port)
	if err != nil {
		return nil, fmt.Errorf("wg: listen %s %s: %w", network, addr, err)
	}
	return ln, nil
}

// listenAddrs returns the overlay addresses a listener on network (base:
// "tcp" or "udp") and addr binds to, and its port.
func (n *Node) listenAddrs(network, addr, base string) ([]netip.Addr, uint16, error) {
	want4, want6, err := families(network, base)
	if err != nil {
		return nil, 0, err
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, 0, err
	}
	pn, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, 0, fmt.Errorf("bad port %q", port)
	}
	var out []netip.Addr
	if host == "" {
		for _, a := range n.Addrs() {
			if (a.Is4() && want4) || (a.Is6() && want6) {
				out = append(out, a)
			}
		}
	} else {
		a, err := netip.ParseAddr(host)
		if err != nil {
			return nil, 0, fmt.Errorf("host %q is not an IP address", host)
		}
		if !slices.Contains(n.Addrs(), a.Unmap()) {
			return nil, 0, fmt.Errorf("%s is not this node's overlay address", a)
		}
		out = append(out, a.Unmap())
	}
	if len(out) == 0 {
		return nil, 0, fmt.Errorf("no overlay address for %s", network)
	}
	return out, uint16(pn), nil
}

// Dial connects to addr over the overlay. addr's host is a peer's name or
// an overlay IP inside some peer's AllowedIPs; network is tcp or udp
// (optionally with 4 or 6).
func (n *Node) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	tnet, err := n.state()
	if err != nil {
		return nil, err
	}
	dst, err := n.resolve(network, addr)
	if err != nil {
		return nil, fmt.Errorf("wg: dial %s %s: %w", network, addr, err)
	}
	var c net.Conn
	if n.cfg.Mode == ModeNetstack {
		c, err = tnet.DialContext(ctx, network, dst.String())
	} else {
		d := net.Dialer{Control: tcpcc.Control(n.cc)}
		c, err = d.DialContext(ctx, network, dst.String())
	}
	if err != nil {
		return nil, fmt.Errorf("wg: dial %s %s: %w", network, addr, err)
	}
	return c, nil
}
