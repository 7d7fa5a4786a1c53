// Command gpumesh is the one gpumesh binary: a GPU host serving a compute
// endpoint inside the tailnet (serve), a client calling it (run), the
// embedded-tailnet demo (demo) and the tools around them.
//
// Each command parses its flags into the configuration of a package (a
// node.HostConfig, a tsnet.Config, diag.Options), starts it and prints
// what came of it; the logic lives in those packages.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// exitError carries a process exit code up to main without printing twice.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// newRootCmd is the gpumesh command and, in one list, its subcommands: a
// new command is one line there.
func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "gpumesh",
		Short:         "A mesh VPN appliance for GPU traffic",
		Long:          "gpumesh joins your tailnet, serves GPUs only inside it, and lets allowed devices run kernels on them.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(
		newServeCmd(),
		newUpCmd(),
		newRunCmd(),
		newCpCmd(),
		newStatusCmd(),
		newDoctorCmd(),
		newGPUsCmd(),
		newQoSCmd(),
		newPolicyCmd(),
		newAuditCmd(),
		newLogoutCmd(),
		newKeygenCmd(),
		newPubkeyCmd(),
		newDemoCmd(),
		newKubeCmd(),
		newVersionCmd(),
	)
	return root
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err == nil {
		return
	}
	code := 1
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	fmt.Fprintln(os.Stderr, "gpumesh:", errorText(err))
	os.Exit(code)
}
