package gpusvc_test

import (
	"context"
	"testing"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	"github.com/gpumesh/gpumesh/gpusvc/cudapb"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
)

// BenchmarkCUDADoor measures a matrix_mul through cuda.CUDAService (params
// as nested lists) and the same through gpumesh.v1's unary Compute (raw
// bytes), each against the raw path measured in the same run: the same
// numbers as raw bytes over TCP between the same two tailnet nodes, plus
// the product computed locally. The door's ratio over the unary one is
// what JSON-like params cost.
func BenchmarkCUDADoor(b *testing.B) {
	w := startWorld(b, "laptop")
	raw := startRaw(b, w)
	door := cudapb.NewCUDAServiceClient(w.conn(b, "laptop"))
	c := w.clients["laptop"]
	ctx := context.Background()
	buf := make([]byte, 1<<20)
	local := cpu.New()
	b.Cleanup(func() { local.Close() })
	for _, n := range []int{2, 64} {
		a := f32([]int64{int64(n), int64(n)})
		req := cudaRequest(b, "matrix_mul", map[string]any{"a": matrix(n), "b": matrix(n)})
		mm := &pb.ComputeRequest{Kernel: "matrix_mul", Args: gpusvc.ArgsToPB([]kernel.Arg{a, a})}
		rawMM := func() {
			raw.roundTrip(b, 2*n*n*4, n*n*4, buf)
			if _, err := local.Compute(ctx, gpusvc.Call{Kernel: "matrix_mul", Args: []kernel.Arg{a, a}, OutShape: []int64{int64(n), int64(n)}}); err != nil {
				b.Fatal(err)
			}
		}
		name := "matmul" + map[int]string{2: "2", 64: "64"}[n]
		b.Run(name+"/cuda", func(b *testing.B) {
			interleave(b, rawMM, func() {
				if _, err := door.Compute(ctx, req); err != nil {
					b.Fatal(err)
				}
			})
		})
		b.Run(name+"/unary", func(b *testing.B) {
			interleave(b, rawMM, func() {
				if _, err := c.ComputeUnary(ctx, mm); err != nil {
					b.Fatal(err)
				}
			})
		})
	}
}
