package main

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/gpumesh/gpumesh/diag"
)

func newDoctorCmd() *cobra.Command {
	var (
		f        diagFlags
		kernel   string
		gpu      string
		needCUDA string
	)
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check what usually goes wrong between this node and its GPU hosts",
		Long: `doctor checks, each on one line marked ok, warn or fail with a hint:
  - this node is on the tailnet, and its control server answers;
  - each GPU host (--host, or every peer that answers) is reachable, and
    whether directly or through a relay;
  - its compute endpoint answers;
  - its policy lets this node run --kernel (the host explains its decision);
  - its GPUs' driver supports the CUDA version the client needs (--need-cuda).

With a pool (--host tag:gpu, --host '*', or several hosts) it checks each of
the pool's hosts, then that the pool has a host to run --kernel on.

It exits with status 1 when a check fails. Like status, it asks the gpumesh
serve or up running on this machine, or with --hostname/--state-dir that
node, joining as it for the moment when it does not run.`,
		Example: "  gpumesh doctor --host gpu-host\n  gpumesh doctor --host gpu-host --kernel saxpy --need-cuda 12.4\n  gpumesh doctor --host tag:gpu",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			opts := f.options()
			opts.Kernel, opts.GPU, opts.NeedCUDA = kernel, gpu, needCUDA
			var checks []diag.Check
			err := f.onNode(ctx, cmd.Flags(),
				func(c diag.LocalClient) (err error) { checks, err = c.Doctor(ctx, opts); return err },
				func(n diag.Node) error { checks = diag.Doctor(ctx, n, opts); return nil },
				func(controlURL string, err error) error {
					checks = diag.JoinFailed(ctx, controlURL, err, f.timeout)
					return nil
				})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if f.asJSON {
				err = diag.WriteJSON(out, checks)
			} else {
				err = diag.WriteChecks(out, checks)
			}
			if err != nil {
				return err
			}
			if diag.Failed(checks) {
				return &exitError{code: 1, err: errors.New("doctor: some checks failed")}
			}
			return nil
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&kernel, "kernel", "matrix_mul", "the kernel to ask the hosts' policies about")
	cmd.Flags().StringVar(&gpu, "gpu", "", `the GPU to ask about ("0", a UUID; default: the host's default)`)
	cmd.Flags().StringVar(&needCUDA, "need-cuda", "", "the CUDA version the client needs, e.g. 12.4")
	return cmd
}
