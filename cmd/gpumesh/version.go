package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// newVersionCmd prints the version the go tool stamped into the binary:
// the module's version, or for a build in a git checkout its tag or
// commit (Go 1.24 and later), so no variable is set at link time.
func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the gpumesh version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			version, ts := "dev", "unknown"
			if bi, ok := debug.ReadBuildInfo(); ok {
				if v := bi.Main.Version; v != "" && v != "(devel)" {
					version = v
				}
				for _, d := range bi.Deps {
					if d.Path == "tailscale.com" {
						ts = d.Version
					}
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "gpumesh %s (%s, tailscale.com %s)\n", version, runtime.Version(), ts)
			return nil
		},
	}
}
