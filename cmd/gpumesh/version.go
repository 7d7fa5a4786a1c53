package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// newVersionCmd prints the version the go tool stamped into the binary
// (the module's version, or the git tag or commit it was built from), so
// no variable is set at link time.
func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the gpumesh version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			version, ts := "dev", "unknown"
			if bi, ok := debug.ReadBuildInfo(); ok {
				version = versionOf(bi)
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

// versionOf is the module's version, else the commit it was built from
// ("dev-0123abcd", "+dirty" when the tree had changes), else "dev".
func versionOf(bi *debug.BuildInfo) string {
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch {
		case s.Key == "vcs.revision" && len(s.Value) >= 8:
			rev = "-" + s.Value[:8]
		case s.Key == "vcs.modified" && s.Value == "true":
			dirty = "+dirty"
		}
	}
	return "dev" + rev + dirty
}
