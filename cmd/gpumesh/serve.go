package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/gpumesh/gpumesh/dscp"
	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/policy"
)

func init() { register(newServeCmd) }

// A serveHook adds one feature to `gpumesh serve` (audit log, metrics, a
// GPU worker, ...) from its own file: it registers its flags, then adjusts
// the host's configuration before the host starts. The returned stop func,
// if any, runs after the host has stopped.
type serveHook struct {
	flags func(fs *pflag.FlagSet)
	apply func(ctx context.Context, cfg *node.HostConfig) (stop func(), err error)
}

var serveHooks []serveHook

func addServeHook(h serveHook) { serveHooks = append(serveHooks, h) }

// applyServeHooks runs every hook's apply in order; on failure the stops
// of the hooks already applied run before it returns.
func applyServeHooks(ctx context.Context, cfg *node.HostConfig) (stop func(), err error) {
	var stops []func()
	stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	for _, h := range serveHooks {
		if h.apply == nil {
			continue
		}
		s, err := h.apply(ctx, cfg)
		if err != nil {
			stop()
			return func() {}, err
		}
		if s != nil {
			stops = append(stops, s)
		}
	}
	return stop, nil
}

func newServeCmd() *cobra.Command {
	var (
		tf          tailnetFlags
		wf          wgFlags
		policyPath  string
		port        int
		maxRequest  string
		maxMemory   string
		joinTimeout time.Duration
		dscpFlag    string
		shapeLink   string
		shapeRate   string
		linkRate    string
	)
	cmd := &cobra.Command{
		Use:   "serve --policy FILE",
		Short: "Join the tailnet and serve this host's GPUs inside it",
		Long: `serve joins the tailnet as a GPU host and serves the compute endpoint on
its tailnet addresses only. Every call is attributed to the caller's tailnet
identity and allowed or refused by the policy file. SIGHUP (or saving the
file) reloads the policy; an invalid one is rejected and the old one stays.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			out := cmd.OutOrStdout()
			log := logger(tf.verbose)
			if policyPath == "" {
				return fmt.Errorf("--policy is required: gpumesh serves nobody without a policy (see examples/policy.hcl)")
			}
			store, err := policy.NewStore(policyPath, func(format string, args ...any) {
				fmt.Fprintf(os.Stderr, format+"\n", args...)
			})
			if err != nil {
				return err
			}
			maxReq, err := policy.ParseSize(maxRequest)
			if err != nil {
				return fmt.Errorf("--max-request: %w", err)
			}
			var maxMem int64
			if maxMemory != "" {
				if maxMem, err = policy.ParseSize(maxMemory); err != nil || maxMem <= 0 {
					return fmt.Errorf("--max-memory %q: want a positive size such as 64GiB", maxMemory)
				}
			}
			qcfg, err := qosConfig(dscpFlag, shapeLink, shapeRate, linkRate)
			if err != nil {
				return err
			}
			ov, err := joinOverlay(ctx, &tf, &wf, qcfg.DSCP, joinTimeout)
			if err != nil {
				return err
			}
			defer ov.Close()
			qcfg.UDPPort = ov.udpPort
			if dscpFlag == "off" {
				qcfg.UDPPort = 0
			}
			hcfg := node.HostConfig{
				Overlay: ov, Name: tf.hostname, Policy: store, Port: port,
				MaxRequestBytes: maxReq, MaxMemory: maxMem, Logger: log, QoS: qcfg,
			}
			stopHooks, err := applyServeHooks(ctx, &hcfg)
			if err != nil {
				return err
			}
			defer stopHooks()
			host, err := node.StartHost(ctx, hcfg)
			if err != nil {
				return err
			}
			defer host.Close()
			hostStarted(host)
			fmt.Fprintf(out, "gpumesh: serving %s on %v port %d (%s only), policy %s\n",
				tf.hostname, ov.addrs(), port, ov.desc, policyPath)

			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			for {
				select {
				case <-ctx.Done():
					fmt.Fprintln(out, "gpumesh: shutting down")
					return nil
				case <-hup:
					if err := host.ReloadPolicy(); err != nil {
						fmt.Fprintf(os.Stderr, "gpumesh: policy reload rejected, old policy stays: %v\n", err)
					} else {
						fmt.Fprintln(out, "gpumesh: policy reloaded")
					}
				}
			}
		},
	}
	tf.register(cmd, "gpu-host")
	wf.register(cmd)
	cmd.Flags().StringVar(&policyPath, "policy", "", "policy file (.hcl or .json)")
	cmd.Flags().IntVar(&port, "port", gpusvc.DefaultPort, "TCP port of the endpoint on the tailnet")
	cmd.Flags().StringVar(&maxRequest, "max-request", "64MiB", "largest request accepted")
	cmd.Flags().StringVar(&maxMemory, "max-memory", "", "memory all callers together may make this host hold: resident buffers, kernel outputs, queued requests (default: half the RAM, at most the GPUs' memory)")
	cmd.Flags().DurationVar(&joinTimeout, "join-timeout", 2*time.Minute, "give up joining the tailnet after this long")
	cmd.Flags().StringVar(&dscpFlag, "dscp", "AF41", `DSCP for the overlay's outer UDP packets (name or 0-63; "off" to leave them unmarked)`)
	cmd.Flags().StringVar(&shapeLink, "shape-link", "", "shape this interface's egress by QoS class with tc/HTB (needs CAP_NET_ADMIN)")
	cmd.Flags().StringVar(&shapeRate, "shape-rate", "", "usable egress rate of --shape-link, e.g. 900Mbit/s or 100MB/s (default: the link speed)")
	cmd.Flags().StringVar(&linkRate, "link-rate", "", "pace GPU traffic to this rate, e.g. 100Mbit/s: the rate of a link beyond this host that it saturates, or a little less, so interactive calls overtake bulk ones in gpumesh, not in that link's queue (default: no pacing)")
	for _, h := range serveHooks {
		if h.flags != nil {
			h.flags(cmd.Flags())
		}
	}
	return cmd
}

// qosConfig turns the QoS flags into the host's QoS configuration; the
// caller sets UDPPort once the overlay is up.
func qosConfig(code, link, rate, linkRate string) (*node.QoSConfig, error) {
	cfg := &node.QoSConfig{ShapeLink: link}
	if code != "off" {
		v, err := dscp.Parse(code)
		if err != nil {
			return nil, fmt.Errorf("--dscp: %w", err)
		}
		cfg.DSCP = v // CS0 too: only dscp.None would mean the default
	}
	if rate != "" {
		r, err := policy.ParseRate(rate)
		if err != nil {
			return nil, fmt.Errorf("--shape-rate: %w", err)
		}
		cfg.ShapeRate = r
	}
	if linkRate != "" {
		r, err := policy.ParseRate(linkRate)
		if err != nil {
			return nil, fmt.Errorf("--link-rate: %w", err)
		}
		cfg.LinkRate = r
	}
	return cfg, nil
}
