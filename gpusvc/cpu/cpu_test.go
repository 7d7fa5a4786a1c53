package cpu_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
)

// Tolerance: results must match the straightforward references within
// 1e-4 relative to the magnitude of the terms summed (float32 rounding of
// sums of up to a few hundred products of values in [-1, 1]).
const tol = 1e-4

func randVec(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = r.Float32()*2 - 1
	}
	return v
}

func tensor(shape []int64, v []float32) kernel.Arg {
	return kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32(shape, v)}
}

func call(t *testing.T, b *cpu.Backend, name string, args ...kernel.Arg) []float32 {
	t.Helper()
	shape, err := kernel.Check(name, args)
	if err != nil {
		t.Fatal(err)
	}
	out, err := b.Compute(context.Background(), gpusvc.Call{Kernel: name, Args: args, OutShape: shape})
	if err != nil {
		t.Fatal(err)
	}
	return out.Float32s()
}

func near(t *testing.T, what string, got, want []float32, scale float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d elements, want %d", what, len(got), len(want))
	}
	for i := range got {
		if d := math.Abs(float64(got[i] - want[i])); d > tol*scale {
			t.Fatalf("%s: element %d = %v, want %v (|diff| %g > %g)", what, i, got[i], want[i], d, tol*scale)
		}
	}
}

func TestKernelsAgainstReferences(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	b := cpu.New()
	for _, sh := range [][3]int{{1, 1, 1}, {3, 5, 7}, {64, 64, 64}, {129, 257, 131}, {200, 1, 300}, {17, 400, 5}} {
		m, k, n := sh[0], sh[1], sh[2]
		t.Run(fmt.Sprintf("matrix_mul_%dx%dx%d", m, k, n), func(t *testing.T) {
			a, bb := randVec(r, m*k), randVec(r, k*n)
			want := make([]float32, m*n)
			for i := range m {
				for j := range n {
					var s float64
					for p := range k {
						s += float64(a[i*k+p]) * float64(bb[p*n+j])
					}
					want[i*n+j] = float32(s)
				}
			}
			got := call(t, b, "matrix_mul", tensor([]int64{int64(m), int64(k)}, a), tensor([]int64{int64(k), int64(n)}, bb))
			near(t, "matrix_mul", got, want, float64(k))
		})
	}
	for _, n := range []int{1, 16, 1000, 4097} {
		x, y := randVec(r, n), randVec(r, n)
		t.Run(fmt.Sprintf("vector_%d", n), func(t *testing.T) {
			want := make([]float32, n)
			for i := range want {
				want[i] = 2.5*x[i] + y[i]
			}
			got := call(t, b, "saxpy", kernel.Arg{Kind: kernel.ArgScalar, Scalar: 2.5}, tensor([]int64{int64(n)}, x), tensor([]int64{int64(n)}, y))
			near(t, "saxpy", got, want, 1)

			var s float64
			for _, v := range x {
				s += float64(v)
			}
			near(t, "reduce_sum", call(t, b, "reduce_sum", tensor([]int64{int64(n)}, x)), []float32{float32(s)}, float64(n))

			for i := range want {
				want[i] = float32(math.Max(float64(x[i]), 0))
			}
			near(t, "relu", call(t, b, "relu", tensor([]int64{int64(n)}, x)), want, 1)
		})
	}
	t.Run("softmax", func(t *testing.T) {
		rows, cols := 7, 33
		x := randVec(r, rows*cols)
		got := call(t, b, "softmax", tensor([]int64{int64(rows), int64(cols)}, x))
		want := make([]float32, len(x))
		for i := range rows {
			var sum float64
			for j := range cols {
				sum += math.Exp(float64(x[i*cols+j]))
			}
			for j := range cols {
				want[i*cols+j] = float32(math.Exp(float64(x[i*cols+j])) / sum)
			}
		}
		near(t, "softmax", got, want, 1)
	})
	t.Run("transpose", func(t *testing.T) {
		m, n := 45, 70
		a := randVec(r, m*n)
		got := call(t, b, "transpose", tensor([]int64{int64(m), int64(n)}, a))
		want := make([]float32, m*n)
		for i := range m {
			for j := range n {
				want[j*m+i] = a[i*n+j]
			}
		}
		near(t, "transpose", got, want, 0)
	})
}

func TestBadCalls(t *testing.T) {
	f := func(shape ...int64) kernel.Arg {
		return tensor(shape, make([]float32, max(1, int(shapeElems(shape)))))
	}
	for _, tc := range []struct {
		name   string
		kernel string
		args   []kernel.Arg
		want   error
	}{
		{"unknown kernel", "conv3d", nil, kernel.ErrUnknownKernel},
		{"inner dims differ", "matrix_mul", []kernel.Arg{f(2, 3), f(4, 2)}, kernel.ErrInvalid},
		{"one argument", "matrix_mul", []kernel.Arg{f(2, 2)}, kernel.ErrInvalid},
		{"1-D matmul", "matrix_mul", []kernel.Arg{f(4), f(4)}, kernel.ErrInvalid},
		{"empty shape", "relu", []kernel.Arg{{Kind: kernel.ArgTensor, Tensor: kernel.Tensor{DType: kernel.Float32}}}, kernel.ErrInvalid},
		{"zero dim", "relu", []kernel.Arg{{Kind: kernel.ArgTensor, Tensor: kernel.Tensor{DType: kernel.Float32, Shape: []int64{0}}}}, kernel.ErrInvalid},
		{"negative dim", "relu", []kernel.Arg{{Kind: kernel.ArgTensor, Tensor: kernel.Tensor{DType: kernel.Float32, Shape: []int64{-4}, Data: make([]byte, 16)}}}, kernel.ErrInvalid},
		{"data shorter than shape", "relu", []kernel.Arg{{Kind: kernel.ArgTensor, Tensor: kernel.Tensor{DType: kernel.Float32, Shape: []int64{4}, Data: make([]byte, 12)}}}, kernel.ErrInvalid},
		{"saxpy lengths differ", "saxpy", []kernel.Arg{{Kind: kernel.ArgScalar, Scalar: 1}, f(3), f(4)}, kernel.ErrInvalid},
		{"saxpy without scalar", "saxpy", []kernel.Arg{f(1), f(3), f(3)}, kernel.ErrInvalid},
		{"huge shape", "relu", []kernel.Arg{{Kind: kernel.ArgTensor, Tensor: kernel.Tensor{DType: kernel.Float32, Shape: []int64{1 << 40, 1 << 40}}}}, kernel.ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := kernel.Check(tc.kernel, tc.args)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Check = %v; want %v", err, tc.want)
			}
		})
	}
}

func shapeElems(s []int64) int64 {
	n := int64(1)
	for _, d := range s {
		n *= d
	}
	return n
}

func TestBuffers(t *testing.T) {
	b := cpu.New()
	ctx := context.Background()
	h, err := b.Alloc(ctx, 0, 16)
	if err != nil {
		t.Fatal(err)
	}
	x := kernel.NewFloat32([]int64{4}, []float32{-1, 2, -3, 4})
	if err := b.WriteAt(ctx, h, 0, x.Data); err != nil {
		t.Fatal(err)
	}
	out, err := b.Compute(ctx, gpusvc.Call{Kernel: "relu", OutShape: []int64{4},
		Args: []kernel.Arg{{Kind: kernel.ArgBuffer, Buffer: h, Tensor: kernel.Tensor{DType: kernel.Float32, Shape: []int64{4}}}}})
	if err != nil {
		t.Fatal(err)
	}
	near(t, "relu(buffer)", out.Float32s(), []float32{0, 2, 0, 4}, 0)
	if err := b.WriteAt(ctx, h, 8, make([]byte, 16)); !errors.Is(err, kernel.ErrInvalid) {
		t.Errorf("write past end = %v; want ErrInvalid", err)
	}
	if err := b.Free(ctx, h); err != nil {
		t.Fatal(err)
	}
	if n, bytes := b.Buffers(); n != 0 || bytes != 0 {
		t.Errorf("after Free: %d buffers, %d bytes", n, bytes)
	}
	if err := b.Free(ctx, h); !errors.Is(err, gpusvc.ErrNoBuffer) {
		t.Errorf("double Free = %v; want ErrNoBuffer", err)
	}
}

func BenchmarkMatMul512(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 2))
	x, y := randVec(r, 512*512), randVec(r, 512*512)
	c := make([]float32, 512*512)
	b.SetBytes(3 * 512 * 512 * 4)
	for b.Loop() {
		cpu.MatMul(c, x, y, 512, 512, 512, 2)
	}
	b.ReportMetric(2*512*512*512/(b.Elapsed().Seconds()/float64(b.N))/1e9, "GFLOP/s")
}
