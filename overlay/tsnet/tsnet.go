// Package tsnet is the tailnet overlay: a gpumesh node as a userspace
// Tailscale node (tailscale.com/tsnet). Listeners live in the node's own
// network stack, so a service listening here is reachable only inside the
// tailnet.
//
// Tailscale code reaches for public hosts by default. This package keeps a
// node quiet unless the user opts in: no log upload, no port mapper, and the
// control URL is always explicit. A node of a plain http:// control server
// (a Headscale without TLS) dials DERP over plain HTTP too (derp.go).
package tsnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"tailscale.com/client/local"
	"tailscale.com/envknob"
	"tailscale.com/ipn"
	"tailscale.com/ipn/ipnstate"
	ts "tailscale.com/tsnet"
	"tailscale.com/types/logger"
	"tailscale.com/wgengine/netstack"

	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/overlay/internal/localapi"
)

// Config says how a node joins a tailnet. The zero value is not enough:
// ControlURL and Hostname are required.
type Config struct {
	// Hostname is the node's name on the tailnet ("gpu-host").
	Hostname string
	// ControlURL is the control server ("https://controlplane.tailscale.com",
	// a Headscale URL). Required: gpumesh never falls back to a default.
	ControlURL string
	// AuthKey authorises the first join. Not needed when Dir already holds
	// the node's state.
	AuthKey string
	// Dir is the state directory. A new one is created with mode 0700; an
	// existing one must belong to this user and not be writable by others
	// (a shared directory such as /tmp is refused, never chmod'ed), and is
	// made private (0700) if others may read it. Empty with a nil Store
	// means a temporary directory removed on Close.
	Dir string
	// Store overrides where state is kept (tests use an in-memory store).
	Store ipn.StateStore
	// Ephemeral nodes are removed from the tailnet when they go offline.
	Ephemeral bool
	// Tags are the ACL tags the node asks to carry ("tag:gpu").
	Tags []string
	// Port is the UDP port for WireGuard traffic; 0 picks one. A fixed port
	// lets QoS find the node's sockets to mark them.
	Port uint16
	// LogUpload opts in to Tailscale's log upload. Off by default.
	LogUpload bool
	// PortMapper opts in to UPnP/NAT-PMP/PCP port mapping. Off by default.
	PortMapper bool
	// Logf receives Tailscale's debug logs; nil discards them.
	Logf logger.Logf
}

// Node is a gpumesh node on a tailnet.
type Node struct {
	cfg    Config
	srv    *ts.Server
	lc     *local.Client
	tmpDir string // removed on Close; empty when Dir was given

	mu     sync.Mutex
	closed bool // guarded by mu
}

var _ overlay.Overlay = (*Node)(nil)

// quiet applies the process-wide switches that keep Tailscale code off
// public hosts. They must be set before the first node starts.
var quiet sync.Once

func setQuiet(cfg Config) {
	quiet.Do(func() {
		if !cfg.LogUpload {
			envknob.SetNoLogsNoSupport()
		}
		if !cfg.PortMapper {
			envknob.Setenv("TS_DISABLE_PORTMAPPER", "true")
		}
		setDERPHTTP(cfg.ControlURL)
	})
}

// New validates cfg and prepares a node. Call Up to join.
func New(cfg Config) (*Node, error) {
	if cfg.Hostname == "" {
		return nil, errors.New("tsnet: hostname is required")
	}
	if cfg.ControlURL == "" {
		return nil, errors.New("tsnet: control URL is required (gpumesh never assumes a default control server)")
	}
	n := &Node{cfg: cfg}
	dir := cfg.Dir
	switch {
	case dir == "" && cfg.Store == nil:
		tmp, err := os.MkdirTemp("", "gpumesh-"+cfg.Hostname+"-")
		if err != nil {
			return nil, fmt.Errorf("tsnet: state dir: %w", err)
		}
		n.tmpDir, dir = tmp, tmp
	case dir == "":
		tmp, err := os.MkdirTemp("", "gpumesh-"+cfg.Hostname+"-")
		if err != nil {
			return nil, fmt.Errorf("tsnet: state dir: %w", err)
		}
		n.tmpDir, dir = tmp, tmp
	default:
		if err := prepareStateDir(dir); err != nil {
			return nil, err
		}
		if err := checkWritable(dir); err != nil {
			return nil, err
		}
	}
	logf := cfg.Logf
	if logf == nil {
		logf = logger.Discard
	}
	n.srv = &ts.Server{
		Dir:           dir,
		Store:         cfg.Store,
		Hostname:      cfg.Hostname,
		ControlURL:    cfg.ControlURL,
		AuthKey:       cfg.AuthKey,
		Ephemeral:     cfg.Ephemeral,
		AdvertiseTags: cfg.Tags,
		Port:          cfg.Port,
		Logf:          logf,
		UserLogf:      logf,
	}
	return n, nil
}

func checkWritable(dir string) error {
	f, err := os.CreateTemp(dir, ".gpumesh-probe-")
	if err != nil {
		return fmt.Errorf("tsnet: state dir %s is not writable: %w", dir, err)
	}
	f.Close()
	return os.Remove(f.Name())
}

// ErrNeedsLogin says the control server wants an interactive login: the
// node has no valid state and no auth key was given.
var ErrNeedsLogin = errors.New("tsnet: the node is not logged in and no auth key was given")

// Up joins the tailnet and returns once the node can talk: it is running,
// has its addresses, and holds a connection to its home DERP server.
// Without an auth key, a node that needs to log in fails at once with
// ErrNeedsLogin instead of waiting for someone to open the login URL.
func (n *Node) Up(ctx context.Context) (*ipnstate.Status, error) {
	setQuiet(n.cfg)
	upCtx, cancel := context.WithCancelCause(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel(nil)
	if n.cfg.AuthKey == "" {
		if err := n.watchLogin(upCtx, cancel, &wg); err != nil {
			return nil, fmt.Errorf("tsnet: join %s as %q: %w", n.cfg.ControlURL, n.cfg.Hostname, err)
		}
	}
	st, err := n.srv.Up(upCtx)
	if err != nil {
		if cause := context.Cause(upCtx); errors.Is(cause, ErrNeedsLogin) {
			err = cause
		} else if hint := n.healthHint(); hint != "" {
			err = fmt.Errorf("%w (%s)", err, hint)
		}
		return nil, fmt.Errorf("tsnet: join %s as %q: %w", n.cfg.ControlURL, n.cfg.Hostname, err)
	}
	lc, err := n.srv.LocalClient()
	if err != nil {
		return nil, fmt.Errorf("tsnet: local client: %w", err)
	}
	n.lc = lc
	if err := n.waitHomeDERP(ctx); err != nil {
		return nil, fmt.Errorf("tsnet: %q waiting for its home DERP: %w%s", n.cfg.Hostname, err, derpHint(n.cfg.ControlURL))
	}
	return st, nil
}

// watchLogin cancels ctx with ErrNeedsLogin when the backend asks for an
// interactive login. Its goroutine ends when ctx does; wg tracks it.
func (n *Node) watchLogin(ctx context.Context, cancel context.CancelCauseFunc, wg *sync.WaitGroup) error {
	lc, err := n.srv.LocalClient() // starts the server
	if err != nil {
		return err
	}
	w, err := lc.WatchIPNBus(ctx, ipn.NotifyInitialState)
	if err != nil {
		return err
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer w.Close()
		for {
			note, err := w.Next()
			if err != nil {
				return // ctx ended
			}
			if note.BrowseToURL != nil {
				cancel(fmt.Errorf("%w (log in at %s, or give an auth key)", ErrNeedsLogin, *note.BrowseToURL))
				return
			}
		}
	}()
	return nil
}

// healthHint returns the backend's health warnings ("unable to connect to
// the control server"), to explain a join that timed out.
func (n *Node) healthHint() string {
	lc, err := n.srv.LocalClient()
	if err != nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := lc.StatusWithoutPeers(ctx)
	if err != nil || len(st.Health) == 0 {
		return ""
	}
	return strings.Join(st.Health, "; ")
}

// waitHomeDERP blocks until the node has chosen a home DERP region and heard
// from it; before that, a peer's first packets to this node can be dropped.
func (n *Node) waitHomeDERP(ctx context.Context) error {
	sys := n.srv.Sys()
	h, ms := sys.HealthTracker.Get(), sys.MagicSock.Get()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if r := ms.GetLastNetcheckReport(ctx); r != nil && r.PreferredDERP != 0 &&
			!h.GetDERPRegionReceivedTime(r.PreferredDERP).IsZero() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Listen listens on the node's tailnet addresses.
func (n *Node) Listen(network, addr string) (net.Listener, error) {
	return n.srv.Listen(network, addr)
}

// ListenPacket listens for UDP on the node's tailnet address addr
// ("ip:port"; the IP is required), in the node's own network stack.
func (n *Node) ListenPacket(network, addr string) (net.PacketConn, error) {
	return n.srv.ListenPacket(network, addr)
}

// SetTCPOption sets an option of the node's userspace TCP (gVisor's
// netstack) for connections opened after it: congestion control, buffer
// size ranges, loss recovery. Valid after Up.
func (n *Node) SetTCPOption(opt tcpip.SettableTransportProtocolOption) error {
	ns, ok := n.srv.Sys().Netstack.GetOK()
	if !ok {
		return errors.New("tsnet: set TCP option: no netstack (before Up?)")
	}
	impl, ok := ns.(*netstack.Impl)
	if !ok {
		return fmt.Errorf("tsnet: set TCP option: netstack is a %T", ns)
	}
	if err := impl.SetTransportProtocolOption(tcp.ProtocolNumber, opt); err != nil {
		return fmt.Errorf("tsnet: set TCP option %T: %v", opt, err)
	}
	return nil
}

// Dial connects to addr on the tailnet; the host may be a peer's name.
func (n *Node) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return n.srv.Dial(ctx, network, addr)
}

// WhoIs asks the node's own Tailscale backend who holds remoteAddr.
func (n *Node) WhoIs(ctx context.Context, remoteAddr string) (overlay.Identity, error) {
	if n.lc == nil {
		return overlay.Identity{}, errors.New("tsnet: WhoIs before Up")
	}
	id, err := localapi.WhoIs(ctx, n.lc, remoteAddr)
	if err != nil && !errors.Is(err, overlay.ErrUnknownPeer) {
		err = fmt.Errorf("tsnet: %w", err)
	}
	return id, err
}

var _ overlay.PeerPather = (*Node)(nil)

// PeerPaths reports each online peer's tailnet address and, when the path
// to it is direct, its current WireGuard endpoint (it changes as peers
// roam; ask again).
func (n *Node) PeerPaths(ctx context.Context) ([]overlay.PeerPath, error) {
	if n.lc == nil {
		return nil, errors.New("tsnet: PeerPaths before Up")
	}
	pp, err := localapi.PeerPaths(ctx, n.lc)
	if err != nil {
		return nil, fmt.Errorf("tsnet: %w", err)
	}
	return pp, nil
}

// Addrs returns the node's own tailnet addresses.
func (n *Node) Addrs() []netip.Addr {
	v4, v6 := n.srv.TailscaleIPs()
	var out []netip.Addr
	for _, a := range []netip.Addr{v4, v6} {
		if a.IsValid() {
			out = append(out, a)
		}
	}
	return out
}

// UDPPort is the local port of the node's WireGuard UDP sockets (magicsock),
// for marking their packets with a DSCP. Valid after Up.
func (n *Node) UDPPort() uint16 { return n.srv.Sys().MagicSock.Get().LocalPort() }

// Hostname returns the node's configured name.
func (n *Node) Hostname() string { return n.cfg.Hostname }

// LocalClient returns the client for the node's own Tailscale backend
// (status, ping). Valid after Up.
func (n *Node) LocalClient() *local.Client { return n.lc }

// Logout removes the node from the tailnet (its key is expired) and closes it.
func (n *Node) Logout(ctx context.Context) error {
	if n.lc == nil {
		return n.Close()
	}
	err := n.lc.Logout(ctx)
	if cerr := n.Close(); err == nil {
		err = cerr
	}
	return err
}

// Close leaves the tailnet. A second Close returns net.ErrClosed.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return net.ErrClosed
	}
	n.closed = true
	n.mu.Unlock()
	err := n.srv.Close()
	if n.tmpDir != "" {
		os.RemoveAll(n.tmpDir)
	}
	return err
}
