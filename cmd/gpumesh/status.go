package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/gpumesh/gpumesh/diag"
	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/node"
)

// `gpumesh status` and `gpumesh doctor` look at a node. A running `gpumesh
// serve` or `gpumesh up` serves its local API on a socket in its state
// dir and makes it known (diag.Find); without flags naming a node they
// ask the one running here, and say where they looked when none does.
// Given a node (--hostname, --state-dir, an auth key) they ask it when it
// runs, or else join the tailnet as that node for the moment.

// namesNode says whether the flags in fs name a node to look at as: then
// status and doctor do not go looking for the running one.
func namesNode(fs *pflag.FlagSet) bool {
	for _, name := range []string{"hostname", "state-dir", "authkey", "authkey-file"} {
		if fs.Changed(name) {
			return true
		}
	}
	return false
}

// findNode is the one node running here, as diag.FindOne finds it, with
// what to do when there is none, or more than one.
func findNode(ctx context.Context) (diag.Running, error) {
	r, err := diag.FindOne(ctx, diag.DefaultSearch())
	if errors.Is(err, diag.ErrNotRunning) {
		return r, fmt.Errorf("%w; start gpumesh up or gpumesh serve, or name a node (--hostname, --state-dir) to join as it for the moment", err)
	}
	return r, err
}

// stateDirOf is the state directory the tailnet flags in fs name, by the
// same rule as tailnetFlags.config.
func stateDirOf(fs *pflag.FlagSet) (string, error) {
	if f := fs.Lookup("state-dir"); f != nil && f.Value.String() != "" {
		return f.Value.String(), nil
	}
	host := fs.Lookup("hostname")
	if host == nil {
		return "", errors.New("no --hostname flag")
	}
	return diag.DefaultStateDir(host.Value.String())
}

// diagFlags are the flags status and doctor share.
type diagFlags struct {
	tf          tailnetFlags
	tsd         tailscaledFlags
	hosts       []string
	port        int
	timeout     time.Duration
	joinTimeout time.Duration
	asJSON      bool
}

func (f *diagFlags) register(cmd *cobra.Command) {
	f.tf.register(cmd, "gpumesh-client")
	f.tsd.register(cmd)
	fl := cmd.Flags()
	fl.StringSliceVar(&f.hosts, "host", nil, "GPU hosts to look at, by tailnet name, or a pool (tag:gpu, *, or several names): its hosts, and which one it would pick (default: every peer that answers)")
	fl.IntVar(&f.port, "port", gpusvc.DefaultPort, "the compute endpoint's port")
	fl.DurationVar(&f.timeout, "timeout", 5*time.Second, "give each probe (ping, call) this long")
	fl.DurationVar(&f.joinTimeout, "join-timeout", 30*time.Second, "with a node named and not running, give up joining as it after this long")
	fl.BoolVar(&f.asJSON, "json", false, "print JSON")
}

func (f *diagFlags) options() diag.Options {
	if target, ok := diagPool(f.hosts); ok {
		return diag.Options{Pool: target, Port: f.port, Timeout: f.timeout}
	}
	return diag.Options{Hosts: f.hosts, Port: f.port, Timeout: f.timeout}
}

// onNode runs local against the running node's local API: the one found
// here when fs names no node, else the named node's, or, when that does
// not run, joined against the node joined for the purpose. joinErr
// handles a failed join; nil returns the error.
func (f *diagFlags) onNode(ctx context.Context, fs *pflag.FlagSet, local func(diag.LocalClient) error, joined func(diag.Node) error,
	joinErr func(controlURL string, err error) error) error {
	tc, err := f.tsd.config(false)
	if err != nil {
		return err
	}
	if tc != nil { // the system's tailscaled is the node: look through it
		j, err := node.Join(ctx, node.JoinConfig{Tailscaled: tc, Timeout: f.joinTimeout})
		if err != nil {
			return err
		}
		defer j.Close()
		return joined(j.Overlay.(diag.Node))
	}
	if !namesNode(fs) {
		r, err := findNode(ctx)
		if err != nil {
			return err
		}
		return local(diag.LocalClient{Path: r.Socket})
	}
	cfg, err := f.tf.config()
	if err != nil {
		return err
	}
	err = local(diag.LocalClient{Path: diag.SocketPath(cfg.Dir)})
	if !errors.Is(err, diag.ErrNotRunning) {
		return err
	}
	j, err := node.Join(ctx, node.JoinConfig{Tailnet: &cfg, Timeout: f.joinTimeout})
	if err != nil {
		if joinErr != nil {
			return joinErr(cfg.ControlURL, err)
		}
		return err
	}
	defer j.Close()
	return joined(j.Overlay.(diag.Node))
}

func newStatusCmd() *cobra.Command {
	var (
		f      diagFlags
		kernel string
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show this node, the GPU hosts it sees, the path to each and their GPUs",
		Long: `status shows this node on the tailnet and its peers: for each, whether the
path is direct or relayed (DERP) and its latency, and for the peers that
serve GPUs their backend, GPUs and load. On a GPU host, the host itself is
listed among them.

Without flags naming a node, status asks the gpumesh serve or gpumesh up
running on this machine (it finds it through its socket), and says where it
looked when none runs. With --hostname or --state-dir it asks that node, or
joins the tailnet as it for the moment when it does not run.

With a pool (--host tag:gpu, --host '*', or several hosts) it looks at the
pool's hosts and says which one the pool would pick for --kernel now, and
why: which hosts' policies allow it, and each one's estimated time to
finish (calls queued, time per call, round trip, path).`,
		Example: "  gpumesh status\n  gpumesh status --host gpu-host --json\n  gpumesh status --host tag:gpu --kernel saxpy\n  gpumesh status --state-dir /var/lib/gpumesh",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			opts := f.options()
			opts.Kernel = kernel
			var rep diag.Report
			err := f.onNode(ctx, cmd.Flags(),
				func(c diag.LocalClient) (err error) { rep, err = c.Status(ctx, opts); return err },
				func(n diag.Node) (err error) { rep, err = diag.Status(ctx, n, opts); return err },
				nil)
			if err != nil {
				return err
			}
			if f.asJSON {
				return diag.WriteJSON(cmd.OutOrStdout(), rep)
			}
			return diag.WriteStatus(cmd.OutOrStdout(), rep)
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&kernel, "kernel", "matrix_mul", "with a pool: the kernel to say where the pool would place")
	return cmd
}
