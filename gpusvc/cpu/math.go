package cpu

import (
	"context"
	"math"
	"sync"
)

// Block sizes for MatMul: a panel of B (kc rows × nc columns, 64 KiB) stays
// in L2 while a band of rows of A streams past it.
const (
	kc = 128
	nc = 128
)

// MatMul computes c[m,n] = a[m,k] · b[k,n] (row-major), splitting the rows
// of c across up to workers goroutines and blocking k and n for the caches.
func MatMul(c, a, b []float32, m, k, n, workers int) {
	MatMulContext(context.Background(), c, a, b, m, k, n, workers)
}

// MatMulContext is MatMul that gives up, with ctx's error, once ctx is
// done: each worker looks between cache blocks.
func MatMulContext(ctx context.Context, c, a, b []float32, m, k, n, workers int) error {
	clear(c[:m*n])
	if workers < 1 {
		workers = 1
	}
	// Small products are not worth a goroutine.
	if int64(m)*int64(k)*int64(n) < 1<<18 || m < 2*workers {
		workers = 1
	}
	rows := (m + workers - 1) / workers
	var wg sync.WaitGroup
	for r0 := 0; r0 < m; r0 += rows {
		r1 := min(r0+rows, m)
		wg.Go(func() { matMulRows(ctx, c, a, b, r0, r1, k, n) })
	}
	wg.Wait()
	return ctx.Err()
}

func matMulRows(ctx context.Context, c, a, b []float32, r0, r1, k, n int) {
	for j0 := 0; j0 < n; j0 += nc {
		j1 := min(j0+nc, n)
		for p0 := 0; p0 < k; p0 += kc {
			if ctx.Err() != nil {
				return
			}
			p1 := min(p0+kc, k)
			for i := r0; i < r1; i++ {
				ci := c[i*n+j0 : i*n+j1]
				ai := a[i*k+p0 : i*k+p1]
				for p, av := range ai {
					if av == 0 {
						continue
					}
					bp := b[(p0+p)*n+j0 : (p0+p)*n+j1]
					axpy(ci, av, bp)
				}
			}
		}
	}
}

// axpy computes y += a·x, four elements at a time.
func axpy(y []float32, a float32, x []float32) {
	x = x[:len(y)]
	i := 0
	for ; i+4 <= len(y); i += 4 {
		y[i] += a * x[i]
		y[i+1] += a * x[i+1]
		y[i+2] += a * x[i+2]
		y[i+3] += a * x[i+3]
	}
	for ; i < len(y); i++ {
		y[i] += a * x[i]
	}
}

// Saxpy computes out = a·x + y.
func Saxpy(out []float32, a float32, x, y []float32) {
	for i := range out {
		out[i] = a*x[i] + y[i]
	}
}

// ReduceSum sums x with pairwise (Kahan-free but blocked) accumulation in float64.
func ReduceSum(x []float32) float32 {
	var s float64
	for _, v := range x {
		s += float64(v)
	}
	return float32(s)
}

// Softmax computes softmax over each consecutive row of length n.
func Softmax(out, x []float32, n int) {
	for r := 0; r+n <= len(x); r += n {
		row, o := x[r:r+n], out[r:r+n]
		mx := float32(math.Inf(-1))
		for _, v := range row {
			mx = max(mx, v)
		}
		var sum float64
		for i, v := range row {
			e := math.Exp(float64(v - mx))
			o[i] = float32(e)
			sum += e
		}
		inv := float32(1 / sum)
		for i := range o {
			o[i] *= inv
		}
	}
}

// ReLU computes max(x, 0) element-wise.
func ReLU(out, x []float32) {
	for i, v := range x {
		out[i] = max(v, 0)
	}
}

// Transpose computes out[n,m] = a[m,n]ᵀ in 32×32 tiles.
func Transpose(out, a []float32, m, n int) {
	const t = 32
	for i0 := 0; i0 < m; i0 += t {
		for j0 := 0; j0 < n; j0 += t {
			for i := i0; i < min(i0+t, m); i++ {
				for j := j0; j < min(j0+t, n); j++ {
					out[j*m+i] = a[i*n+j]
				}
			}
		}
	}
}
