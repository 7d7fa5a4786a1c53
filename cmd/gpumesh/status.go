package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/gpumesh/gpumesh/diag"
	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
)

// `gpumesh status` and `gpumesh doctor` look at a node. A running `gpumesh
// serve` or `gpumesh up` holds its node's state directory, so they ask it
// through the local API on a socket in that directory (diag.ServeLocal);
// when nothing runs there, they join the tailnet as the node themselves.

func init() {
	register(newStatusCmd)
	var fs *pflag.FlagSet
	addServeHook(serveHook{
		flags: func(f *pflag.FlagSet) { fs = f },
		apply: func(_ context.Context, cfg *node.HostConfig) (func(), error) {
			ov := cfg.Overlay
			if j, ok := ov.(*joined); ok {
				ov = j.Overlay
			}
			n, ok := ov.(diag.Node)
			if !ok || fs == nil {
				return nil, nil // not a tailnet node: nothing to report on
			}
			dir, err := stateDirOf(fs)
			if err != nil {
				return nil, err
			}
			api, err := diag.ServeLocal(diag.SocketPath(dir), n)
			if err != nil {
				return nil, err
			}
			served.set(api)
			return func() {
				served.set(nil)
				api.Close()
			}, nil
		},
	})
}

// served is the local API the serve hook started, until it stops.
var served servedAPI

// servedAPI holds the local API of a running `gpumesh serve`, so that
// hostStarted can hand it the host once the host runs.
type servedAPI struct {
	mu  sync.Mutex
	api *diag.LocalAPI // guarded by mu; nil when none runs
}

func (s *servedAPI) set(api *diag.LocalAPI) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.api = api
}

// hostStarted hands the host `gpumesh serve` started to its local API,
// which then answers `gpumesh qos status` with the host's live QoS. serve
// calls it once node.StartHost returns.
func hostStarted(h *node.Host) {
	served.mu.Lock()
	defer served.mu.Unlock()
	if served.api != nil {
		serveQoS(served.api, h)
	}
}

// serveQoS makes api answer GET /v1/qos with h's QoS at each request.
func serveQoS(api *diag.LocalAPI, h *node.Host) {
	api.SetQoS(func() any { return diag.LiveQoSOf(h.QoSStatus()) })
}

// startLocalAPI serves `gpumesh status` and `gpumesh doctor` for node n,
// whose state is in stateDir, until stop. `gpumesh up` calls it too.
func startLocalAPI(n diag.Node, stateDir string) (stop func(), err error) {
	api, err := diag.ServeLocal(diag.SocketPath(stateDir), n)
	if err != nil {
		return nil, err
	}
	return func() { api.Close() }, nil
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
	base, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("no --state-dir and no user config dir: %w", err)
	}
	return filepath.Join(base, "gpumesh", host.Value.String()), nil
}

// diagFlags are the flags status and doctor share.
type diagFlags struct {
	tf          tailnetFlags
	hosts       []string
	port        int
	timeout     time.Duration
	joinTimeout time.Duration
	asJSON      bool
}

func (f *diagFlags) register(cmd *cobra.Command) {
	f.tf.register(cmd, "gpumesh-client")
	fl := cmd.Flags()
	fl.StringSliceVar(&f.hosts, "host", nil, "GPU hosts to look at, by tailnet name (default: every peer that answers)")
	fl.IntVar(&f.port, "port", gpusvc.DefaultPort, "the compute endpoint's port")
	fl.DurationVar(&f.timeout, "timeout", 5*time.Second, "give each probe (ping, call) this long")
	fl.DurationVar(&f.joinTimeout, "join-timeout", 30*time.Second, "when no gpumesh runs as this node, give up joining after this long")
	fl.BoolVar(&f.asJSON, "json", false, "print JSON")
}

func (f *diagFlags) options() diag.Options {
	return diag.Options{Hosts: f.hosts, Port: f.port, Timeout: f.timeout}
}

// onNode runs local against the running node's local API or, when none
// runs, joined against a node this command joins as for the purpose.
// joinErr handles a failed join; nil returns the error.
func (f *diagFlags) onNode(ctx context.Context, local func(diag.LocalClient) error, joined func(diag.Node) error,
	joinErr func(controlURL string, err error) error) error {
	cfg, err := f.tf.config()
	if err != nil {
		return err
	}
	err = local(diag.LocalClient{Path: diag.SocketPath(cfg.Dir)})
	if !errors.Is(err, diag.ErrNotRunning) {
		return err
	}
	ov, err := tsnet.New(cfg)
	if err != nil {
		return err
	}
	defer ov.Close()
	jctx, cancel := context.WithTimeout(ctx, f.joinTimeout)
	_, err = ov.Up(jctx)
	cancel()
	if err != nil {
		if joinErr != nil {
			return joinErr(cfg.ControlURL, err)
		}
		return fmt.Errorf("join tailnet at %s: %w", cfg.ControlURL, err)
	}
	return joined(ov)
}

func newStatusCmd() *cobra.Command {
	var f diagFlags
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show this node, the GPU hosts it sees, the path to each and their GPUs",
		Long: `status shows this node on the tailnet and its peers: for each, whether the
path is direct or relayed (DERP) and its latency, and for the peers that
serve GPUs their backend, GPUs and load.

When gpumesh serve or gpumesh up runs as this node (same --hostname and
--state-dir), status asks it; otherwise it joins the tailnet as the node
for the moment.`,
		Example: "  gpumesh status\n  gpumesh status --host gpu-host --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			opts := f.options()
			var rep diag.Report
			err := f.onNode(ctx,
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
	return cmd
}
