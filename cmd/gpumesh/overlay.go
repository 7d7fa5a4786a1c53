package main

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/spf13/cobra"

	"github.com/gpumesh/gpumesh/diag"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/overlay/tailscaled"
	"github.com/gpumesh/gpumesh/overlay/wg"
)

// wgFlags select an overlay other than a tailnet node of gpumesh's own:
// the system's tailscaled, or a plain WireGuard mesh.
type wgFlags struct {
	path string
	mode string
	tun  string
	tsd  tailscaledFlags
}

func (f *wgFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.path, "wg", "", "use a static WireGuard mesh from this wg-quick style file instead of a tailnet")
	fl.StringVar(&f.mode, "wg-mode", "netstack", "WireGuard data path: netstack (no root) or tun (a kernel interface; needs CAP_NET_ADMIN)")
	fl.StringVar(&f.tun, "wg-tun", wg.DefaultTUNName, "kernel interface name with --wg-mode tun")
	f.tsd.register(cmd)
}

// status and doctor look through tailscaled's node as through their own.
var _ diag.Node = (*tailscaled.Node)(nil)

// tailscaledFlags select the system's tailscaled's node.
type tailscaledFlags struct {
	on         bool
	socket     string
	congestion string
}

func (f *tailscaledFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.BoolVar(&f.on, "tailscaled", false, "use the system's tailscaled (with a TUN interface) instead of joining the tailnet: kernel TCP, faster over a lossy WAN")
	fl.StringVar(&f.socket, "tailscaled-socket", tailscaled.DefaultSocket(), "with --tailscaled: its LocalAPI socket")
	fl.StringVar(&f.congestion, "tcp-congestion", "", "with --tailscaled or --wg-mode tun: TCP congestion control of gpumesh's connections (default bbr where the kernel has it; system: the kernel's default)")
}

// config is the tailscaled overlay the flags name; nil without
// --tailscaled. kernelTCP says another overlay flag chose a data path on
// the kernel's TCP (a WireGuard mesh), which --tcp-congestion applies to.
func (f *tailscaledFlags) config(kernelTCP bool) (*tailscaled.Config, error) {
	if !f.on {
		if f.congestion != "" && !kernelTCP {
			return nil, errors.New("--tcp-congestion needs --tailscaled or --wg-mode tun (gpumesh's own tailnet node and WireGuard netstack run a userspace TCP)")
		}
		return nil, nil
	}
	return &tailscaled.Config{Socket: f.socket, Congestion: f.congestion}, nil
}

// joinConfig is the overlay the flags name: the WireGuard mesh with --wg
// (its error logs on log), the system's tailscaled with --tailscaled,
// else a tailnet node of gpumesh's own.
func joinConfig(tf *tailnetFlags, wf *wgFlags, timeout time.Duration, log *slog.Logger) (node.JoinConfig, error) {
	jc := node.JoinConfig{Timeout: timeout}
	if wf != nil {
		tc, err := wf.tsd.config(wf.path != "")
		switch {
		case err != nil:
			return jc, err
		case tc != nil && wf.path != "":
			return jc, errors.New("--tailscaled and --wg: choose one overlay")
		case tc != nil:
			tc.Logf = logfTo(log)
			jc.Tailscaled = tc
			return jc, nil
		}
	}
	if wf != nil && wf.path != "" {
		mode, err := wg.ParseMode(wf.mode)
		if err != nil {
			return jc, err
		}
		jc.WireGuard = &wg.Config{Path: wf.path, Mode: mode, TUNName: wf.tun, Congestion: wf.tsd.congestion,
			Logf: logfTo(log), Verbose: tf.verbose}
		return jc, nil
	}
	cfg, err := tf.config()
	if err != nil {
		return jc, err
	}
	jc.Tailnet = &cfg
	return jc, nil
}

// tailscaledHint says that a tailscaled with a TUN interface runs here,
// at its default socket, which --tailscaled would use instead of a node
// of gpumesh's own; "" when none answers within a second.
func tailscaledHint(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if !tailscaled.Usable(ctx, tailscaled.DefaultSocket()) {
		return ""
	}
	return "a tailscaled with a TUN interface runs on this machine: --tailscaled would serve through its node, with the kernel's TCP (faster over a lossy WAN)"
}
