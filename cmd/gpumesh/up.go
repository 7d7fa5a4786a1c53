package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/gpumesh/gpumesh/diag"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/overlay/forward"
	"github.com/gpumesh/gpumesh/overlay/tailscaled"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
	"github.com/gpumesh/gpumesh/pool"
)

// upNode is what `up` needs of the node it joined (node.Join): a tailnet
// node of its own, or the system's tailscaled's (--tailscaled).
type upNode interface {
	pool.Network
	diag.Node
}

var (
	_ upNode = (*tsnet.Node)(nil)
	_ upNode = (*tailscaled.Node)(nil)
)

func newUpCmd() *cobra.Command {
	var (
		tf          tailnetFlags
		tsd         tailscaledFlags
		forwards    []string
		anyAddress  bool
		dialTimeout time.Duration
		probe       time.Duration
		joinTimeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "up [--forward LOCAL=HOST[:PORT]|LOCAL=POOL]...",
		Short: "Join the tailnet and forward local ports to GPU hosts",
		Long: `up joins the tailnet as a cloud node and stays up until interrupted.
Each --forward listens on loopback and carries every connection into the
tailnet to HOST (port 50051 unless given), so a program on this machine uses
a GPU host with a plain, unencrypted gRPC channel to localhost:

    channel = grpc.insecure_channel('localhost:50051')

The GPU host sees the connection come from this node: its policy decides on
this node's tailnet identity. For that reason a forward listens on loopback
only; --forward-any-address allows another listen address, which lets anyone
who reaches it act as this node.

When a host is unreachable a new connection is reset after --dial-timeout,
so gRPC clients see UNAVAILABLE; they recover once the host is back. While
connections are open, each forward checks every --probe-interval that its
host still accepts a new connection, and resets the open ones when it does
not: a host that vanished (power loss, left the tailnet) gives UNAVAILABLE
rather than calls that hang until their deadline.

A forward to a pool target (tag:gpu, gpu-a,gpu-b, or *) places each new
connection on one host of the pool: one whose policy lets this node run
some kernel, with the fewest of this node's connections and calls. Every
call a client makes on its connection, a session's included, goes to that
host; when the host is lost its connections are closed, and the clients'
next connections go to the others.`,
		Example: `  gpumesh up --forward localhost:50051=gpu-host
  gpumesh up --forward localhost:50051=tag:gpu
  gpumesh up --forward 50051=gpu-a --forward 50052=gpu-b:50051`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			// One style for all it says: its progress and the forwarder's
			// warnings alike are records of this logger, on stdout.
			log := commandLogger(cmd.OutOrStdout(), tf.verbose)
			rules := make([]forward.Rule, 0, len(forwards))
			var pools forwardPools
			for _, s := range forwards {
				r, isPool, err := parseForward(s)
				if err != nil {
					return fmt.Errorf("--forward: %w", err)
				}
				if isPool {
					pools.targets = append(pools.targets, r.Target)
				}
				rules = append(rules, r)
			}
			cfg, err := tf.config()
			if err != nil {
				return err
			}
			tcfg, err := tsd.config(false)
			if err != nil {
				return err
			}
			// Listen before joining, so that a refused or busy address fails
			// at once; connections wait for the join, up to the dial timeout.
			var ov upNode // set before joined is closed
			joined := make(chan struct{})
			dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
				select {
				case <-joined:
				case <-ctx.Done():
					return nil, fmt.Errorf("not on the tailnet yet: %w", ctx.Err())
				}
				if c, ok, err := pools.dial(ctx, network, addr); ok {
					return c, err
				}
				return ov.Dial(ctx, network, addr)
			}
			var fwd *forward.Forwarder
			if len(rules) > 0 {
				fwd, err = forward.Start(forward.Config{
					Dial:             dial,
					Rules:            rules,
					AllowNonLoopback: anyAddress,
					DialTimeout:      dialTimeout,
					ProbeInterval:    probe,
					Logger:           log,
				})
				if err != nil {
					if errors.Is(err, forward.ErrNotLoopback) {
						return fmt.Errorf("%w (--forward-any-address overrides this)", err)
					}
					return err
				}
			}
			jc := node.JoinConfig{Tailnet: &cfg, Timeout: joinTimeout}
			if tcfg != nil {
				tcfg.Logf = logfTo(log)
				jc.Tailnet, jc.Tailscaled = nil, tcfg
			}
			j, err := node.Join(ctx, jc)
			if err != nil {
				if fwd != nil {
					fwd.Close()
				}
				return err
			}
			ov = j.Overlay.(upNode)
			defer func() {
				// The forwards end before the node leaves the tailnet.
				if fwd != nil {
					fwd.Close()
				}
				pools.close()
				j.Close()
			}()
			if err := pools.start(ov, tf.verbose); err != nil {
				return err
			}
			close(joined)
			// `gpumesh status` and `gpumesh doctor` ask this process.
			if api, err := node.ServeLocalAPI(node.LocalAPIConfig{StateDir: cfg.Dir}, ov, j.Name, log); err != nil {
				log.Warn("no status socket: status and doctor cannot reach this node", "err", err)
			} else {
				defer api.Close()
			}
			log.Info(fmt.Sprintf("up as %s %v", j.Name, j.Addrs()))
			if fwd != nil {
				for _, f := range fwd.Forwards() {
					addrs := make([]string, len(f.Addrs))
					for i, a := range f.Addrs {
						addrs[i] = a.String()
					}
					target := f.Rule.Target
					if _, ok := pools.pools[target]; ok {
						target = "pool " + poolTargetOfRule(f.Rule)
					}
					log.Info(fmt.Sprintf("forwarding %s -> %s", strings.Join(addrs, ", "), target))
				}
			}
			log.Info("ready; interrupt to leave")
			<-ctx.Done()
			log.Info("shutting down")
			return nil
		},
	}
	tf.register(cmd, "gpumesh-client")
	tsd.register(cmd)
	cmd.Flags().StringArrayVar(&forwards, "forward", nil, "LOCAL=HOST[:PORT] or LOCAL=POOL: listen on LOCAL (localhost:50051, or a port) and forward to HOST, or to the hosts of POOL (tag:gpu, a,b, *), on the tailnet; repeatable")
	cmd.Flags().BoolVar(&anyAddress, "forward-any-address", false, "allow --forward to listen on addresses other than loopback (anyone reaching them acts as this node)")
	cmd.Flags().DurationVar(&dialTimeout, "dial-timeout", forward.DefaultDialTimeout, "reset a forwarded connection when the host does not answer within this long")
	cmd.Flags().DurationVar(&probe, "probe-interval", forward.DefaultProbeInterval, "check hosts with open connections this often; a negative value turns checking off")
	cmd.Flags().DurationVar(&joinTimeout, "join-timeout", node.DefaultJoinTimeout, "give up joining the tailnet after this long")
	return cmd
}
