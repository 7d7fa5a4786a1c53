package main

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/gpumesh/gpumesh/gpusvc/audit"
)

func newAuditCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Read a GPU host's audit log (gpumesh serve --audit-log)",
	}
	cmd.AddCommand(newAuditTailCmd())
	return cmd
}

func newAuditTailCmd() *cobra.Command {
	var (
		follow bool
		n      int
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "tail [-f] [-n N] FILE",
		Short: "Print the last calls in an audit log; -f keeps printing new ones",
		Long: `tail prints the last N calls of the audit log FILE (reaching into its
rotated files FILE.1, FILE.2, ... when needed), one per line: time, caller,
method, kernel, GPU, decision and rule, gRPC code, duration, bytes in and
out, error. --json prints the log's own JSON lines. With -f it then waits
for new calls and prints them as they come, following the log across
rotations, until interrupted.`,
		Example: "  gpumesh audit tail -n 20 /var/lib/gpumesh/audit.log\n  gpumesh audit tail -f --json /var/lib/gpumesh/audit.log | jq .",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := args[0]
			out := cmd.OutOrStdout()
			// Note the size first: lines written while the tail is printed
			// are then followed, not lost.
			var size int64
			if follow {
				st, err := os.Stat(path)
				if err != nil {
					return fmt.Errorf("audit log: %w", err)
				}
				size = st.Size()
			}
			lines, err := audit.Tail(path, n)
			if err != nil {
				return err
			}
			bad := 0
			print := func(line []byte) error {
				return printAuditLine(out, line, asJSON, &bad)
			}
			for _, l := range lines {
				if err := print(l); err != nil {
					return err
				}
			}
			if follow {
				if err := audit.Follow(cmd.Context(), path, size, 0, print); err != nil {
					return err
				}
			}
			if bad > 0 {
				return fmt.Errorf("%d lines of %s are not audit entries", bad, path)
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing calls as they are logged")
	cmd.Flags().IntVarP(&n, "lines", "n", 10, "how many of the last calls to print (0: all)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the JSON lines as logged")
	return cmd
}

func printAuditLine(w io.Writer, line []byte, asJSON bool, bad *int) error {
	e, err := audit.Parse(line)
	if err != nil {
		*bad++
		return nil
	}
	if asJSON {
		_, err = fmt.Fprintf(w, "%s\n", line)
	} else {
		_, err = fmt.Fprintln(w, audit.Format(e))
	}
	return err
}
