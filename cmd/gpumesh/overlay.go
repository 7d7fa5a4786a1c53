package main

import (
	"log/slog"
	"time"

	"github.com/spf13/cobra"

	"github.com/gpumesh/gpumesh/node"
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

// joinConfig is the overlay the flags name: the WireGuard mesh with --wg
// (its error logs on log), else the tailnet.
func joinConfig(tf *tailnetFlags, wf *wgFlags, timeout time.Duration, log *slog.Logger) (node.JoinConfig, error) {
	jc := node.JoinConfig{Timeout: timeout}
	if wf != nil && wf.path != "" {
		mode, err := wg.ParseMode(wf.mode)
		if err != nil {
			return jc, err
		}
		jc.WireGuard = &wg.Config{Path: wf.path, Mode: mode, TUNName: wf.tun, Logf: logfTo(log), Verbose: tf.verbose}
		return jc, nil
	}
	cfg, err := tf.config()
	if err != nil {
		return jc, err
	}
	jc.Tailnet = &cfg
	return jc, nil
}
