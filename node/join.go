package node

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/overlay/tailscaled"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
	"github.com/gpumesh/gpumesh/overlay/wg"
)

// JoinConfig says how a node joins its overlay: a tailnet (as a node of
// its own, or through the system's tailscaled) or a static WireGuard
// mesh, exactly one.
type JoinConfig struct {
	// Tailnet joins a tailnet as a tsnet node.
	Tailnet *tsnet.Config
	// Tailscaled uses the tailnet node of the system's tailscaled, which
	// must run with a TUN interface: gpumesh's connections are then the
	// kernel's TCP (overlay/tailscaled).
	Tailscaled *tailscaled.Config
	// WireGuard brings up a static WireGuard mesh. A host marks its outer
	// packets as its QoSConfig says, whatever DSCP is set here.
	WireGuard *wg.Config
	// Timeout bounds the join; 0 means DefaultJoinTimeout.
	Timeout time.Duration
}

// DefaultJoinTimeout bounds a join when JoinConfig.Timeout is 0.
const DefaultJoinTimeout = 2 * time.Minute

func (c *JoinConfig) validate() error {
	n := 0
	for _, set := range []bool{c.Tailnet != nil, c.Tailscaled != nil, c.WireGuard != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return errors.New("node: join a tailnet (own node or the system's tailscaled) or a WireGuard mesh, exactly one")
	}
	if c.Timeout < 0 {
		return fmt.Errorf("node: join timeout %v: want 0 or more", c.Timeout)
	}
	return nil
}

// Joined is a node that is up on its overlay. Close leaves the overlay.
type Joined struct {
	// Overlay is the node: a *tsnet.Node, a *tailscaled.Node or a *wg.Node.
	Overlay overlay.Overlay
	// Name is the node's tailnet hostname (tailscaled's, through it); ""
	// on a WireGuard mesh.
	Name string
	// StateDir is the tailnet node's state dir; "" when it keeps none
	// there, and on a WireGuard mesh.
	StateDir string
	// Desc says which overlay, for messages: "tailnet URL", "WireGuard
	// mesh FILE (netstack)".
	Desc string
	// UDPPort is the port of the tailnet node's WireGuard sockets, whose
	// packets a host marks; 0 on a WireGuard mesh (its Bind marks) and
	// through tailscaled (its sockets are not gpumesh's to mark).
	UDPPort uint16
	// ForeignUDP is set when the overlay's WireGuard sockets belong to
	// another process (tailscaled), so that no outer DSCP can be marked.
	ForeignUDP bool
}

// Addrs are the node's own overlay addresses.
func (j *Joined) Addrs() []netip.Addr {
	if a, ok := j.Overlay.(interface{ Addrs() []netip.Addr }); ok {
		return a.Addrs()
	}
	return nil
}

// Close leaves the overlay. A second Close returns net.ErrClosed.
func (j *Joined) Close() error { return j.Overlay.Close() }

// Join brings a node up on the overlay cfg names, within its timeout. A
// node that does not come up is closed again.
func Join(ctx context.Context, cfg JoinConfig) (*Joined, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = DefaultJoinTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if w := cfg.WireGuard; w != nil {
		n, err := wg.New(*w)
		if err != nil {
			return nil, err
		}
		if err := n.Up(ctx); err != nil {
			n.Close()
			return nil, fmt.Errorf("wireguard mesh from %s: %w", w.Path, err)
		}
		return &Joined{Overlay: n, Desc: fmt.Sprintf("WireGuard mesh %s (%s)", w.Path, w.Mode)}, nil
	}
	if c := cfg.Tailscaled; c != nil {
		n, err := tailscaled.New(*c)
		if err != nil {
			return nil, err
		}
		if _, err := n.Up(ctx); err != nil {
			n.Close()
			return nil, err
		}
		desc := "the tailnet of tailscaled at " + n.LocalSocket()
		if cc := n.Congestion(); cc != "" {
			desc += " with TCP " + cc
		}
		return &Joined{Overlay: n, Name: n.Hostname(), Desc: desc, ForeignUDP: true}, nil
	}
	t := cfg.Tailnet
	n, err := tsnet.New(*t)
	if err != nil {
		return nil, err
	}
	if _, err := n.Up(ctx); err != nil {
		n.Close()
		return nil, fmt.Errorf("join tailnet at %s: %w", t.ControlURL, err)
	}
	return &Joined{Overlay: n, Name: t.Hostname, StateDir: t.Dir, Desc: "tailnet " + t.ControlURL, UDPPort: n.UDPPort()}, nil
}
