// Command gpumesh is the one gpumesh binary: a GPU host serving a compute
// endpoint inside the tailnet (serve), a client calling it (run), the
// embedded-tailnet demo (demo) and the tools around them.
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

// commands holds the constructors of the top-level subcommands. Each
// subcommand's file adds itself in an init func, so that the files stay
// independent of each other.
var commands []func() *cobra.Command

func register(f func() *cobra.Command) { commands = append(commands, f) }

// exitError carries a process exit code up to main without printing twice.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "gpumesh",
		Short:         "A mesh VPN appliance for GPU traffic",
		Long:          "gpumesh joins your tailnet, serves GPUs only inside it, and lets allowed devices run kernels on them.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	for _, f := range commands {
		root.AddCommand(f())
	}
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
