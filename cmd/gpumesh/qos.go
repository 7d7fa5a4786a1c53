package main

import (
	"errors"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/policy"
	"github.com/gpumesh/gpumesh/qos"
	"github.com/gpumesh/gpumesh/qos/tc"
)

func init() { register(newQoSCmd) }

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
	)
	cmd := &cobra.Command{
		Use:   "status [--policy FILE] [--link IFACE --rate RATE]",
		Short: "Show what QoS this host can do and the classes a policy configures",
		Long: `status probes this host: whether outer DSCP marking works (checked on
loopback, no privilege needed), whether the process holds CAP_NET_ADMIN,
and which qdiscs and filters the kernel offers for host egress shaping
(tried on a throwaway veth). With --policy it lists the policy's classes;
with --link too, the HTB tree the node would install there.

Live counters (bytes and queue delay per class) come from a running node.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			printMarking(out)
			printShaping(out, probe)
			if policyPath == "" {
				fmt.Fprintln(out, "classes: none given (use --policy FILE)")
				return nil
			}
			p, err := policy.ParseFile(policyPath)
			if err != nil {
				return err
			}
			classes := node.QoSClasses(p.Classes())
			if len(classes) == 0 {
				fmt.Fprintf(out, "classes: %s declares none\n", policyPath)
				return nil
			}
			if err := qos.ValidateClasses(classes); err != nil {
				return err
			}
			fmt.Fprintf(out, "classes (%s):\n", policyPath)
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
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&policyPath, "policy", "", "policy file whose classes to show")
	fl.StringVar(&link, "link", "", "egress interface to plan host shaping for")
	fl.StringVar(&rate, "rate", "", "usable egress rate of --link, as in the policy (e.g. 1Gbit/s); default: the link speed")
	fl.BoolVar(&probe, "probe", true, "probe the kernel's qdiscs and filters (creates and deletes a veth)")
	return cmd
}

func printMarking(out io.Writer) {
	tos, err := qos.CheckMarking(qos.DSCPAF41)
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
			rate = fmt.Sprintf("%d B/s", c.Rate)
		}
		if c.Burst > 0 {
			burst = fmt.Sprintf("%d B", c.Burst)
		}
		fmt.Fprintf(tw, "  %s\t%s (%d)\t%d\t%s\t%s\n", c.Name, qos.DSCPName(c.DSCP), c.DSCP, c.Priority, rate, burst)
	}
	tw.Flush()
}
