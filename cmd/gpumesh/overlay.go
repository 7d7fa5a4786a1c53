package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/gpumesh/gpumesh/dscp"
	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
	"github.com/gpumesh/gpumesh/overlay/wg"
)

// wgFlags select the plain WireGuard mode instead of a tailnet.
type wgFlags struct {
	path string
	mode string
	tun  string
}

func (f *wgFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.path, "wg", "", "use a static WireGuard mesh from this wg-quick style file instead of a tailnet")
	fl.StringVar(&f.mode, "wg-mode", "netstack", "WireGuard data path: netstack (no root) or tun (a kernel interface; needs CAP_NET_ADMIN)")
	fl.StringVar(&f.tun, "wg-tun", wg.DefaultTUNName, "kernel interface name with --wg-mode tun")
}

// joined is a node that is up on one overlay or the other.
type joined struct {
	overlay.Overlay
	addrs   func() []netip.Addr
	udpPort uint16 // the tailnet's WireGuard port to mark; 0 for --wg (its Bind marks)
	desc    string
}

// PeerPaths passes on the overlay's peer paths where it has them.
func (j *joined) PeerPaths(ctx context.Context) ([]overlay.PeerPath, error) {
	if pp, ok := j.Overlay.(overlay.PeerPather); ok {
		return pp.PeerPaths(ctx)
	}
	return nil, errors.ErrUnsupported
}

// joinOverlay brings this node up on the tailnet, or on the WireGuard mesh
// when --wg is given. code, unless dscp.None, marks the WireGuard mode's
// packets.
func joinOverlay(ctx context.Context, tf *tailnetFlags, wf *wgFlags, code dscp.Code, timeout time.Duration) (*joined, error) {
	jctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if wf != nil && wf.path != "" {
		mode, err := wg.ParseMode(wf.mode)
		if err != nil {
			return nil, err
		}
		logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
		n, err := wg.New(wg.Config{Path: wf.path, Mode: mode, TUNName: wf.tun, DSCP: code, Logf: logf, Verbose: tf.verbose})
		if err != nil {
			return nil, err
		}
		if err := n.Up(jctx); err != nil {
			n.Close()
			return nil, fmt.Errorf("wireguard mesh from %s: %w", wf.path, err)
		}
		return &joined{Overlay: n, addrs: n.Addrs, desc: fmt.Sprintf("WireGuard mesh %s (%s)", wf.path, wf.mode)}, nil
	}
	cfg, err := tf.config()
	if err != nil {
		return nil, err
	}
	n, err := tsnet.New(cfg)
	if err != nil {
		return nil, err
	}
	if _, err := n.Up(jctx); err != nil {
		n.Close()
		return nil, fmt.Errorf("join tailnet at %s: %w", cfg.ControlURL, err)
	}
	return &joined{Overlay: n, addrs: n.Addrs, udpPort: n.UDPPort(), desc: "tailnet " + cfg.ControlURL}, nil
}
