package main

import (
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/spf13/cobra"

	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/pool"
)

func newRunCmd() *cobra.Command {
	var (
		tf          tailnetFlags
		wf          wgFlags
		size        int
		check       bool
		joinTimeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "run HOST|POOL KERNEL",
		Short: "Run a built-in kernel on a GPU host by its tailnet name, or on a pool of hosts",
		Long: `run joins the tailnet, calls KERNEL on HOST with random inputs of the given
size (matrix_mul: two size×size matrices; the others: vectors of size), and
prints the round-trip time. With --check it compares the result with the same
computation done locally. A pool target (tag:gpu, gpu-a,gpu-b, or *) runs it
on the pool's least loaded host that allows it, and says which.`,
		Example: "  gpumesh run gpu-host matrix_mul --size 512 --check\n  gpumesh run tag:gpu matrix_mul --size 512",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			hostName, kernelName := args[0], args[1]
			in, err := randomInputs(kernelName, size)
			if err != nil {
				return err
			}
			jc, err := joinConfig(&tf, &wf, joinTimeout, logger(tf.verbose))
			if err != nil {
				return err
			}
			ov, err := node.Join(ctx, jc)
			if err != nil {
				return err
			}
			defer ov.Close()
			if pool.IsTarget(hostName) {
				return runOnPool(ctx, cmd.OutOrStdout(), peerNetwork{ov.Overlay}, hostName, kernelName, in, check, tf.verbose)
			}
			c, err := node.Dial(ov.Overlay, hostName)
			if err != nil {
				return err
			}
			defer c.Close()
			return runAndReport(ctx, cmd.OutOrStdout(), c, hostName, kernelName, in, check)
		},
	}
	tf.register(cmd, "gpumesh-client")
	wf.register(cmd)
	cmd.Flags().IntVar(&size, "size", 512, "input size (matrix side, or vector length)")
	cmd.Flags().BoolVar(&check, "check", true, "check the result against a local computation")
	cmd.Flags().DurationVar(&joinTimeout, "join-timeout", node.DefaultJoinTimeout, "give up joining the tailnet after this long")
	return cmd
}

// randomInputs makes arguments for a built-in kernel.
func randomInputs(name string, n int) ([]kernel.Arg, error) {
	if _, ok := kernel.Lookup(name); !ok {
		return nil, fmt.Errorf("unknown kernel %q (built-ins: %v)", name, kernel.Names())
	}
	if n <= 0 {
		return nil, fmt.Errorf("--size must be positive, got %d", n)
	}
	r := rand.New(rand.NewPCG(uint64(n), 42))
	vec := func(k int) []float32 {
		v := make([]float32, k)
		for i := range v {
			v[i] = r.Float32()*2 - 1
		}
		return v
	}
	t := func(shape []int64, v []float32) kernel.Arg {
		return kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32(shape, v)}
	}
	nn := int64(n)
	switch name {
	case "matrix_mul":
		return []kernel.Arg{t([]int64{nn, nn}, vec(n*n)), t([]int64{nn, nn}, vec(n*n))}, nil
	case "saxpy":
		return []kernel.Arg{{Kind: kernel.ArgScalar, Scalar: 2}, t([]int64{nn}, vec(n)), t([]int64{nn}, vec(n))}, nil
	case "transpose":
		return []kernel.Arg{t([]int64{nn, nn}, vec(n*n))}, nil
	default:
		return []kernel.Arg{t([]int64{nn}, vec(n))}, nil
	}
}
