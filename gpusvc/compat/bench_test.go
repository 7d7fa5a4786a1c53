package compat_test

import (
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/gpumesh/gpumesh/gpusvc/compat"
	"github.com/gpumesh/gpumesh/gpusvc/cudapb"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
)

// BenchmarkDoor measures what the cuda.CUDAService door costs the host per
// matrix_mul call of n×n matrices beyond gpumesh.v1's raw path for the same
// numbers: decoding the request and encoding the response (the kernel
// itself is the same either way). It reports the time ratio (x-raw), the
// request's size on the wire (wire-x) and the heap allocated per call
// (heap-x), each against the raw path measured in the same run.
func BenchmarkDoor(b *testing.B) {
	for _, n := range []int{16, 256} {
		b.Run(fmt.Sprintf("matmul%d", n), func(b *testing.B) {
			vals := make([]float32, n*n)
			rows := make([]any, n)
			for i := range rows {
				row := make([]any, n)
				for j := range row {
					v := float32(i*n+j) / 7
					vals[i*n+j] = v
					row[j] = float64(v)
				}
				rows[i] = row
			}
			params, err := structpb.NewStruct(map[string]any{"a": rows, "b": rows})
			if err != nil {
				b.Fatal(err)
			}
			doorReq, err := proto.Marshal(&cudapb.ComputeRequest{Kernel: "matrix_mul", Params: params})
			if err != nil {
				b.Fatal(err)
			}
			t := kernel.NewFloat32([]int64{int64(n), int64(n)}, vals)
			tensor := &pb.Arg{Value: &pb.Arg_Tensor{Tensor: &pb.Tensor{Dtype: pb.DType_DTYPE_FLOAT32, Shape: t.Shape, Data: t.Data}}}
			rawReq, err := proto.Marshal(&pb.ComputeRequest{Kernel: "matrix_mul", Args: []*pb.Arg{tensor, tensor}})
			if err != nil {
				b.Fatal(err)
			}
			out := t // a result of the same shape

			raw := func() {
				var req pb.ComputeRequest
				if err := proto.Unmarshal(rawReq, &req); err != nil {
					b.Fatal(err)
				}
				if _, err := proto.Marshal(&pb.ComputeResponse{Outputs: []*pb.Tensor{{Dtype: pb.DType(out.DType), Shape: out.Shape, Data: out.Data}}}); err != nil {
					b.Fatal(err)
				}
			}
			door := func() {
				var req cudapb.ComputeRequest
				if err := proto.Unmarshal(doorReq, &req); err != nil {
					b.Fatal(err)
				}
				if _, err := compat.ToCall(&req, compat.Limits{}); err != nil {
					b.Fatal(err)
				}
				res, err := compat.Response(out, 0, compat.Limits{})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := proto.Marshal(res); err != nil {
					b.Fatal(err)
				}
			}
			rawHeap, doorHeap := heap(raw), heap(door)

			var rs, ds []time.Duration
			for b.Loop() {
				t0 := time.Now()
				raw()
				t1 := time.Now()
				door()
				ds = append(ds, time.Since(t1))
				rs = append(rs, t1.Sub(t0))
			}
			r, d := p50(rs), p50(ds)
			b.ReportMetric(float64(r.Microseconds()), "raw-p50-µs")
			b.ReportMetric(float64(d.Microseconds()), "door-p50-µs")
			b.ReportMetric(float64(d)/float64(r), "x-raw")
			b.ReportMetric(float64(len(doorReq))/float64(len(rawReq)), "wire-x")
			b.ReportMetric(float64(doorHeap)/float64(rawHeap), "heap-x")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// heap returns the bytes f allocates per call, averaged over a few calls.
func heap(f func()) uint64 {
	const runs = 5
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	for range runs {
		f()
	}
	runtime.ReadMemStats(&m1)
	return (m1.TotalAlloc - m0.TotalAlloc) / runs
}

func p50(d []time.Duration) time.Duration {
	slices.Sort(d)
	return d[len(d)/2]
}
