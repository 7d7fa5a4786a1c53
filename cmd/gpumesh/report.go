package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"strings"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/internal/human"
)

// runAndReport calls kernelName on the host with args, prints one line
// about it, and (with check) compares the result with the CPU reference.
func runAndReport(ctx context.Context, w io.Writer, c *gpusvc.Client, host, kernelName string, args []kernel.Arg, check bool) error {
	start := time.Now()
	res, err := c.ComputeRequest(ctx, computeRequest(kernelName, args))
	rtt := time.Since(start)
	if err != nil {
		return fmt.Errorf("%s on %s: %w", kernelName, host, err)
	}
	if len(res.GetOutputs()) == 0 {
		return fmt.Errorf("%s on %s: no output", kernelName, host)
	}
	got := gpusvc.TensorFromPB(res.GetOutputs()[0])
	line := fmt.Sprintf("%s %s → %v: round trip %s (compute %s)", kernelName, shapes(args), got.Shape,
		human.Duration(rtt), human.Duration(time.Duration(res.GetComputeNanos())))
	return printChecked(w, line, host, kernelName, args, got, check)
}

// printChecked prints a call's line, after checking got against the local
// computation when check is set.
func printChecked(w io.Writer, line, host, kernelName string, args []kernel.Arg, got kernel.Tensor, check bool) error {
	if check {
		maxErr, scale, err := compareLocal(kernelName, args, got)
		if err != nil {
			return err
		}
		if maxErr > 1e-4*scale {
			return fmt.Errorf("%s on %s: result differs from the local computation: max |err| %.3g > %.3g", kernelName, host, maxErr, 1e-4*scale)
		}
		line += fmt.Sprintf("; matches local computation (max |err| %.2g)", maxErr)
	}
	fmt.Fprintln(w, line)
	return nil
}

func computeRequest(name string, args []kernel.Arg) *pb.ComputeRequest {
	return &pb.ComputeRequest{Kernel: name, Args: gpusvc.ArgsToPB(args)}
}

func shapes(args []kernel.Arg) string {
	var parts []string
	for _, a := range args {
		switch a.Kind {
		case kernel.ArgScalar:
			parts = append(parts, fmt.Sprintf("%g", a.Scalar))
		default:
			parts = append(parts, fmt.Sprint(a.Tensor.Shape))
		}
	}
	return strings.Join(parts, " ")
}

// compareLocal computes the call on this machine's CPU and returns the
// largest absolute difference, and the scale the tolerance applies to (the
// number of terms summed per output element).
func compareLocal(name string, args []kernel.Arg, got kernel.Tensor) (maxErr, scale float64, err error) {
	shape, err := kernel.Check(name, args)
	if err != nil {
		return 0, 0, err
	}
	want, err := cpu.New().Compute(context.Background(), gpusvc.Call{Kernel: name, Args: args, OutShape: shape})
	if err != nil {
		return 0, 0, err
	}
	g, w := got.Float32s(), want.Float32s()
	if len(g) != len(w) {
		return 0, 0, fmt.Errorf("%s: got %d elements, want %d", name, len(g), len(w))
	}
	for i := range g {
		maxErr = math.Max(maxErr, math.Abs(float64(g[i]-w[i])))
	}
	scale = 1
	switch name {
	case "matrix_mul":
		scale = float64(args[0].Tensor.Shape[1])
	case "reduce_sum":
		scale = float64(args[0].Tensor.Elems())
	}
	return maxErr, scale, nil
}
