package kernel

import (
	"context"
	"errors"
	"fmt"

	"github.com/gpumesh/gpumesh/kernelname"
)

// ComputeFunc runs a built-in kernel and returns its first output: a
// client's or a pool's Compute.
type ComputeFunc func(ctx context.Context, kernelName string, args ...Arg) (Tensor, error)

// MatMul multiplies a (n×k) by b (k×m) with compute's matrix_mul, for the
// clients' row-slice convenience. Its errors name the operand at fault.
func MatMul(ctx context.Context, compute ComputeFunc, a, b [][]float32) ([][]float32, error) {
	fa, n, k, err := flatten(a)
	if err != nil {
		return nil, fmt.Errorf("matmul: a: %w", err)
	}
	fb, k2, m, err := flatten(b)
	if err != nil {
		return nil, fmt.Errorf("matmul: b: %w", err)
	}
	if k != k2 {
		return nil, fmt.Errorf("matmul: a is %d×%d, b is %d×%d: inner dimensions differ", n, k, k2, m)
	}
	arg := func(rows, cols int, v []float32) Arg {
		return Arg{Kind: ArgTensor, Tensor: NewFloat32([]int64{int64(rows), int64(cols)}, v)}
	}
	t, err := compute(ctx, kernelname.MatrixMul, arg(n, k, fa), arg(k, m, fb))
	if err != nil {
		return nil, err
	}
	v := t.Float32s()
	if len(v) != n*m {
		return nil, fmt.Errorf("matmul: host returned %d values for a %d×%d result", len(v), n, m)
	}
	out := make([][]float32, n)
	for i := range out {
		out[i] = v[i*m : (i+1)*m : (i+1)*m]
	}
	return out, nil
}

// flatten checks that x is a non-empty rectangle and returns it row-major.
func flatten(x [][]float32) (flat []float32, rows, cols int, err error) {
	if len(x) == 0 || len(x[0]) == 0 {
		return nil, 0, 0, errors.New("empty matrix")
	}
	rows, cols = len(x), len(x[0])
	flat = make([]float32, 0, rows*cols)
	for i, r := range x {
		if len(r) != cols {
			return nil, 0, 0, fmt.Errorf("row %d has %d columns, row 0 has %d", i, len(r), cols)
		}
		flat = append(flat, r...)
	}
	return flat, rows, cols, nil
}
