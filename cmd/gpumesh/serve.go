package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/gpumesh/gpumesh/dscp"
	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/audit"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/policy"
)

// serveFlags are serve's flags; hostConfig turns them into the host's
// configuration.
type serveFlags struct {
	tf          tailnetFlags
	wf          wgFlags
	policyPath  string
	port        int
	maxRequest  string
	maxMemory   string
	joinTimeout time.Duration
	// QoS
	dscp, shapeLink, shapeRate, linkRate string
	// backend
	backend    string
	worker     string
	workerArgs []string
	// audit log and metrics
	auditLog      string
	auditMaxSize  string
	auditKeep     int
	metricsListen string
}

func (f *serveFlags) register(cmd *cobra.Command) {
	f.tf.register(cmd, "gpu-host")
	f.wf.register(cmd)
	fs := cmd.Flags()
	fs.StringVar(&f.policyPath, "policy", "", "policy file (.hcl or .json)")
	fs.IntVar(&f.port, "port", gpusvc.DefaultPort, "TCP port of the endpoint on the tailnet")
	fs.StringVar(&f.maxRequest, "max-request", "64MiB", "largest request accepted")
	fs.StringVar(&f.maxMemory, "max-memory", "", "memory all callers together may make this host hold: resident buffers, kernel outputs, queued requests (default: half the RAM, at most the GPUs' memory)")
	fs.DurationVar(&f.joinTimeout, "join-timeout", node.DefaultJoinTimeout, "give up joining the tailnet after this long")
	fs.StringVar(&f.dscp, "dscp", "AF41", `DSCP for the overlay's outer UDP packets (name or 0-63; "off" to leave them unmarked)`)
	fs.StringVar(&f.shapeLink, "shape-link", "", "shape this interface's egress by QoS class with tc/HTB (needs CAP_NET_ADMIN)")
	fs.StringVar(&f.shapeRate, "shape-rate", "", "usable egress rate of --shape-link, e.g. 900Mbit/s or 100MB/s (default: the link speed)")
	fs.StringVar(&f.linkRate, "link-rate", "", "pace GPU traffic to this rate, e.g. 100Mbit/s: the rate of a link beyond this host that it saturates, or a little less, so interactive calls overtake bulk ones in gpumesh, not in that link's queue (default: no pacing)")
	fs.StringVar(&f.backend, "backend", "auto", `compute backend: "cuda" (gpumesh-gpu workers; fail if they cannot start), "cpu", or "auto" (cuda when a worker starts, else cpu)`)
	fs.StringVar(&f.worker, "gpu-worker", "", "the gpumesh-gpu worker binary (default: gpumesh-gpu next to this executable, then $PATH)")
	fs.StringArrayVar(&f.workerArgs, "gpu-worker-arg", nil, "extra argument for every worker (repeatable)")
	fs.MarkHidden("gpu-worker-arg")
	fs.StringVar(&f.auditLog, "audit-log", "", "append one JSON line per call to `FILE` (read it with 'gpumesh audit tail')")
	fs.StringVar(&f.auditMaxSize, "audit-max-size", "100MiB", "rotate the audit log at this size")
	fs.IntVar(&f.auditKeep, "audit-keep", audit.DefaultKeep, "rotated audit logs to keep (FILE.1 ... FILE.N)")
	fs.StringVar(&f.metricsListen, "metrics-listen", "", `serve Prometheus metrics at /metrics on a loopback address (127.0.0.1:9090) or on the tailnet only ("tailnet:9090")`)
}

// hostConfig is the host the flags describe, logging on log, but for its
// policy store, which serve makes once the flags are known to be right.
func (f *serveFlags) hostConfig(log *slog.Logger) (node.HostConfig, error) {
	var cfg node.HostConfig
	if f.policyPath == "" {
		return cfg, errors.New("--policy is required: gpumesh serves nobody without a policy (see examples/policy.hcl)")
	}
	maxReq, err := policy.ParseSize(f.maxRequest)
	if err != nil {
		return cfg, fmt.Errorf("--max-request: %w", err)
	}
	var maxMem int64
	if f.maxMemory != "" {
		if maxMem, err = policy.ParseSize(f.maxMemory); err != nil || maxMem <= 0 {
			return cfg, fmt.Errorf("--max-memory %q: want a positive size such as 64GiB", f.maxMemory)
		}
	}
	qcfg, err := qosConfig(f.dscp, f.shapeLink, f.shapeRate, f.linkRate)
	if err != nil {
		return cfg, err
	}
	join, err := joinConfig(&f.tf, &f.wf, f.joinTimeout, log)
	if err != nil {
		return cfg, err
	}
	cfg = node.HostConfig{
		Join:    &join,
		Name:    f.tf.hostname,
		Logger:  log,
		Port:    f.port,
		Server:  gpusvc.Config{MaxRequestBytes: maxReq, MaxMemory: maxMem},
		QoS:     qcfg,
		Backend: node.BackendConfig{Kind: node.BackendKind(f.backend), Worker: f.worker, WorkerArgs: f.workerArgs},
		// status, doctor and qos status ask a tailnet host through it.
		LocalAPI: &node.LocalAPIConfig{},
	}
	switch {
	case join.WireGuard != nil:
		cfg.LocalAPI = nil // a WireGuard mesh has no tailnet status to report
	case join.Tailscaled != nil:
		// The node and its name are tailscaled's; gpumesh keeps no state
		// of its own, so its local API has a home only when given one.
		cfg.Name = ""
		cfg.LocalAPI = nil
		if f.tf.stateDir != "" {
			cfg.LocalAPI = &node.LocalAPIConfig{StateDir: f.tf.stateDir}
		}
	}
	if f.auditLog != "" {
		max, err := policy.ParseSize(f.auditMaxSize)
		if err != nil || max <= 0 {
			return cfg, fmt.Errorf("--audit-max-size %q: want a positive size such as 100MiB", f.auditMaxSize)
		}
		if f.auditKeep < 0 {
			return cfg, fmt.Errorf("--audit-keep must be 0 or more, got %d", f.auditKeep)
		}
		cfg.Audit = &node.AuditConfig{Path: f.auditLog, MaxBytes: max, Keep: f.auditKeep}
	}
	if f.metricsListen != "" {
		cfg.Metrics = &node.MetricsConfig{Listen: f.metricsListen}
	}
	return cfg, nil
}

func newServeCmd() *cobra.Command {
	var f serveFlags
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
			log := commandLogger(cmd.OutOrStdout(), f.tf.verbose)
			cfg, err := f.hostConfig(log)
			if err != nil {
				return err
			}
			if cfg.Policy, err = policy.NewStore(f.policyPath, logfTo(log)); err != nil {
				return err
			}
			host, err := node.StartHost(ctx, cfg)
			if err != nil {
				return err
			}
			defer func() {
				if err := host.Close(); err != nil {
					log.Warn("shutting down: " + err.Error())
				}
			}()
			j := host.Joined()
			log.Info(fmt.Sprintf("serving %s on %v port %d (%s only), policy %s", host.Name(), j.Addrs(), f.port, j.Desc, f.policyPath))
			if cfg.Join.Tailnet != nil {
				if hint := tailscaledHint(ctx); hint != "" {
					log.Info(hint)
				}
			}

			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			for {
				select {
				case <-ctx.Done():
					log.Info("shutting down")
					return nil
				case <-hup:
					host.ReloadPolicy() // the store logs what came of it
				}
			}
		},
	}
	f.register(cmd)
	return cmd
}

// qosConfig turns the QoS flags into the host's QoS configuration.
func qosConfig(code, link, rate, linkRate string) (*node.QoSConfig, error) {
	cfg := &node.QoSConfig{ShapeLink: link}
	if code == "off" {
		cfg.NoOuterMarking = true
	} else {
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
