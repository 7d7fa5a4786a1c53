package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/gpumesh/gpumesh/diag"
	"github.com/gpumesh/gpumesh/dscp"
	"github.com/gpumesh/gpumesh/internal/human"
	"github.com/gpumesh/gpumesh/policy"
	"github.com/gpumesh/gpumesh/qos"
	"github.com/gpumesh/gpumesh/qos/engine"
	"github.com/gpumesh/gpumesh/qos/tc"
)

func newQoSCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "qos",
		Short: "Quality of service: DSCP marking, scheduling and host shaping",
	}
	cmd.AddCommand(newQoSStatusCmd())
	return cmd
}

func newQoSStatusCmd() *cobra.Command {
	var (
		policyPath string
		link       string
		rate       string
		probe      bool
		asJSON     bool
	)
	cmd := &cobra.Command{
		Use:   "status [--policy FILE] [--link IFACE --rate RATE]",
		Short: "Show a running host's live QoS, or what QoS this host can do",
		Long: `status first asks the gpumesh serve running on this machine (the one it
finds by itself, or the one running as --hostname or on --state-dir) for
its live QoS: whether outer DSCP marking is on, per class the bytes, chunks
and queue delay of the scheduler, and the tc tree it installed with the
kernel's counters per tc class.

When no node runs there, status probes this host: whether outer DSCP
marking works (checked on loopback, no privilege needed), whether the
process holds CAP_NET_ADMIN, and which qdiscs and filters the kernel
offers for host egress shaping (tried on a throwaway veth).

With --policy it lists the policy's classes; with --link too, the HTB tree
the node would install there.`,
		Example: "  gpumesh qos status\n  gpumesh qos status --hostname gpu-host --json\n  gpumesh qos status --policy policy.hcl --link eth0 --rate 1Gbit/s",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			sock, raw, err := askLiveQoS(cmd.Context(), cmd.Flags())
			switch {
			case err == nil && asJSON:
				var b bytes.Buffer
				if err := json.Indent(&b, raw, "", "  "); err != nil {
					return fmt.Errorf("node at %s: %w", sock, err)
				}
				_, err := fmt.Fprintf(out, "%s\n", bytes.TrimSpace(b.Bytes()))
				return err
			case err == nil:
				var st diag.LiveQoS
				if err := json.Unmarshal(raw, &st); err != nil {
					return fmt.Errorf("node at %s: %w", sock, err)
				}
				fmt.Fprintf(out, "live QoS of the node at %s\n", sock)
				printLiveQoS(out, st)
			case asJSON:
				return fmt.Errorf("--json shows a running node's live QoS: %w", err)
			case errors.Is(err, diag.ErrNotRunning) && sock == "":
				fmt.Fprintf(out, "no running node found (%v); probing this host\n", err)
			case errors.Is(err, diag.ErrNotRunning):
				fmt.Fprintf(out, "no running node found at %s; probing this host\n", sock)
			case errors.Is(err, diag.ErrNoQoS):
				fmt.Fprintf(out, "node at %s: %v; probing this host\n", sock, err)
			default:
				return err
			}
			if err != nil {
				printMarking(out)
				printShaping(out, probe)
			}
			if policyPath == "" {
				if err != nil {
					fmt.Fprintln(out, "classes: none given (use --policy FILE)")
				}
				return nil
			}
			return printPolicyQoS(out, policyPath, link, rate)
		},
	}
	fl := cmd.Flags()
	fl.String("hostname", "gpu-host", "the node to ask: the --hostname gpumesh serve runs as")
	fl.String("state-dir", "", "the node's state directory (default: the user config dir, gpumesh/HOSTNAME)")
	fl.BoolVar(&asJSON, "json", false, "print the running node's live QoS as JSON")
	fl.StringVar(&policyPath, "policy", "", "policy file whose classes to show")
	fl.StringVar(&link, "link", "", "egress interface to plan host shaping for")
	fl.StringVar(&rate, "rate", "", "usable egress rate of --link, as in the policy (e.g. 1Gbit/s); default: the link speed")
	fl.BoolVar(&probe, "probe", true, "probe the kernel's qdiscs and filters (creates and deletes a veth)")
	return cmd
}

// printPolicyQoS lists the classes the policy at path configures and, with
// a link, the HTB tree the node would install there.
func printPolicyQoS(out io.Writer, path, link, rate string) error {
	p, err := policy.ParseFile(path)
	if err != nil {
		return err
	}
	classes := engine.Classes(p)
	if len(classes) == 0 {
		fmt.Fprintf(out, "classes: %s declares none\n", path)
		return nil
	}
	if err := qos.ValidateClasses(classes); err != nil {
		return err
	}
	fmt.Fprintf(out, "classes (%s):\n", path)
	printClasses(out, classes)
	if link == "" {
		return nil
	}
	var bytesPerSec int64
	if rate != "" {
		if bytesPerSec, err = policy.ParseRate(rate); err != nil {
			return fmt.Errorf("--rate: %w", err)
		}
	}
	r, err := tc.Plan(tc.Config{Link: link, Rate: bytesPerSec, Classes: classes})
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "plan (not installed; the node installs it when it holds CAP_NET_ADMIN):")
	fmt.Fprintln(out, r)
	return nil
}

// askLiveQoS asks the node running here, or on the state directory the
// flags in fs name, for its live QoS: the JSON of a diag.LiveQoS. It
// returns the socket it asked, for messages.
func askLiveQoS(ctx context.Context, fs *pflag.FlagSet) (sock string, raw json.RawMessage, err error) {
	if fs.Changed("state-dir") || fs.Changed("hostname") {
		dir, err := stateDirOf(fs)
		if err != nil {
			return "", nil, fmt.Errorf("%w: %w", diag.ErrNotRunning, err)
		}
		sock = diag.SocketPath(dir)
	} else {
		r, err := diag.FindOne(ctx, diag.DefaultSearch())
		if err != nil {
			return "", nil, err // none found is diag.ErrNotRunning
		}
		sock = r.Socket
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	raw, err = diag.LocalClient{Path: sock}.QoS(ctx)
	return sock, raw, err
}

// printLiveQoS renders a running host's QoS: marking, the scheduler's
// classes, the tc tree and its counters.
func printLiveQoS(out io.Writer, st diag.LiveQoS) {
	if m := st.Marking; m == nil {
		fmt.Fprintln(out, "outer marking: off")
	} else {
		state := "on"
		if m.Error != "" {
			state = "failing"
		}
		fmt.Fprintf(out, "outer marking: %s, DSCP %s (%d) on UDP port %d, %d socket(s) marked", state, m.DSCP, m.DSCPValue, m.UDPPort, m.Sockets)
		if m.CheckedAt != nil {
			fmt.Fprintf(out, " at %s", m.CheckedAt.Format(time.RFC3339))
		}
		if m.Error != "" {
			fmt.Fprintf(out, "; last error: %s", m.Error)
		}
		fmt.Fprintln(out)
	}
	if st.LinkRateBytesPerS > 0 {
		fmt.Fprintf(out, "pacing: all classes to %s (--link-rate)\n", human.Rate(float64(st.LinkRateBytesPerS)))
	} else {
		fmt.Fprintln(out, "pacing: off (classes go as fast as the overlay takes them)")
	}
	if len(st.Classes) == 0 {
		fmt.Fprintln(out, "classes: none scheduled")
	} else {
		fmt.Fprintln(out, "classes:")
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  NAME\tDSCP\tPRIORITY\tRATE\tBYTES\tCHUNKS\tQUEUED\tMEAN-WAIT\tMAX-WAIT\tTHROTTLED")
		for _, c := range st.Classes {
			rate, mean := "-", "-"
			if c.RateBytesPerS > 0 {
				rate = human.Rate(float64(c.RateBytesPerS))
			}
			if c.Chunks > 0 {
				mean = msStr(c.MeanWaitMS)
			}
			fmt.Fprintf(tw, "  %s\t%s (%d)\t%d\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", c.Name, c.DSCP, c.DSCPValue, c.Priority,
				rate, human.Bytes(c.Bytes), c.Chunks, c.Queued, mean, msStr(c.MaxWaitMS), msStr(c.ThrottledMS))
		}
		tw.Flush()
	}
	sh := st.Shaping
	if sh == nil {
		fmt.Fprintln(out, "host shaping: not installed")
		return
	}
	fmt.Fprintln(out, "host shaping: installed")
	fmt.Fprintln(out, "  "+strings.ReplaceAll(strings.TrimSuffix(sh.Tree, "\n"), "\n", "\n  "))
	if len(sh.Classes) == 0 {
		fmt.Fprintln(out, "  tc counters: unavailable")
		return
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  CLASS\tCLASSID\tBYTES\tPACKETS\tDROPS\tOVERLIMITS\tBACKLOG")
	for _, c := range sh.Classes {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%d\t%d\t%s\n", c.Name, c.ClassID, human.Bytes(c.Bytes), c.Packets, c.Drops, c.Overlimits, human.Bytes(uint64(c.BacklogBytes)))
	}
	tw.Flush()
	if len(sh.Routes) == 0 {
		fmt.Fprintln(out, "  by peer: none (every packet classified by its DSCP)")
		return
	}
	fmt.Fprintln(out, "  by peer (WireGuard endpoint -> class; others by DSCP):")
	for _, r := range sh.Routes {
		fmt.Fprintf(out, "    %s -> %s\n", r.Endpoint, r.Class)
	}
}

// msStr prints a number of milliseconds as a duration: "150µs", "1.5s".
func msStr(ms float64) string { return human.Duration(time.Duration(ms * float64(time.Millisecond))) }

func printMarking(out io.Writer) {
	tos, err := dscp.Check(dscp.AF41)
	if err != nil {
		fmt.Fprintf(out, "outer marking: not working here: %v\n", err)
		return
	}
	fmt.Fprintf(out, "outer marking: works without privilege (loopback check received TOS %#02x = AF41)\n", tos)
}

func printShaping(out io.Writer, probe bool) {
	if !tc.HasPrivilege() {
		fmt.Fprintln(out, "host shaping: CAP_NET_ADMIN not held, tc would be skipped (marking still works)")
		return
	}
	fmt.Fprintln(out, "host shaping: CAP_NET_ADMIN held")
	if !probe {
		return
	}
	sup, err := tc.Probe(tc.ProbeConfig{})
	switch {
	case errors.Is(err, tc.ErrNoPrivilege):
		fmt.Fprintln(out, "  kernel: probe refused:", err)
	case err != nil:
		fmt.Fprintln(out, "  kernel: probe failed:", err)
	default:
		fmt.Fprintln(out, "  kernel:", sup)
		if !sup.Has("htb") || !sup.Has("u32") {
			fmt.Fprintln(out, "  htb or u32 missing: the node cannot shape here")
		}
	}
}

func printClasses(out io.Writer, classes []qos.Class) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  NAME\tDSCP\tPRIORITY\tRATE\tBURST")
	for _, c := range classes {
		rate, burst := "-", "-"
		if c.Rate > 0 {
			rate = human.Rate(float64(c.Rate))
		}
		if c.Burst > 0 {
			burst = human.Bytes(c.Burst)
		}
		fmt.Fprintf(tw, "  %s\t%s (%d)\t%d\t%s\t%s\n", c.Name, c.DSCP, c.DSCP.Value(), c.Priority, rate, burst)
	}
	tw.Flush()
}
