package compat_test

import (
	"context"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/compat"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	"github.com/gpumesh/gpumesh/gpusvc/cudapb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
)

// FuzzToCall decodes arbitrary bytes as a wire cuda.ComputeRequest and
// converts it: nothing may panic, every refusal is an InvalidArgument or
// ResourceExhausted status, and whatever converts is a call the kernel
// accepts, within the limits, that runs on the CPU backend and converts
// back to a response of the promised shape.
func FuzzToCall(f *testing.F) {
	for _, js := range []string{
		`{"kernel": "matrix_mul", "params": {"a": [[1, 2], [3, 4]], "b": [[5, 6], [7, 8]]}}`,
		`{"kernel": "matrix_mul", "params": {"args": [[[1, 2]], [[3], [4]]], "dtype": "float16"}}`,
		`{"kernel": "saxpy", "params": {"a": 2, "x": [1, 2, 3], "y": [4, 5, 6]}}`,
		`{"kernel": "softmax", "params": {"x": [[1, 2], [3, 4]]}}`,
		`{"kernel": "transpose", "params": {"a": [[1, 2, 3]], "dtype": "int32"}}`,
		`{"kernel": "reduce_sum", "params": {"X": [[[1]], [[2]]]}}`,
		`{"kernel": "relu", "params": {"x": [1, [2]]}}`,
	} {
		b, err := proto.Marshal(request(f, js))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	lim := compat.Limits{MaxElements: 1 << 12, MaxResultElements: 1 << 12}
	backend := cpu.New()
	f.Cleanup(func() { backend.Close() })
	f.Fuzz(func(t *testing.T, data []byte) {
		var req cudapb.ComputeRequest
		if proto.Unmarshal(data, &req) != nil {
			return
		}
		c, err := compat.ToCall(&req, lim)
		if err != nil {
			if code := status.Code(err); code != codes.InvalidArgument && code != codes.ResourceExhausted {
				t.Fatalf("refused with %v: %v", code, err)
			}
			return
		}
		shape, err := kernel.Check(c.Kernel, c.Args)
		if err != nil || !slices.Equal(shape, c.OutShape) {
			t.Fatalf("converted call fails its kernel's check: %v (shape %v, call says %v)", err, shape, c.OutShape)
		}
		for i, a := range c.Args {
			if a.Kind == kernel.ArgTensor && a.Tensor.Elems() > lim.MaxElements {
				t.Fatalf("argument %d has %d elements, over the limit", i, a.Tensor.Elems())
			}
		}
		out, err := backend.Compute(context.Background(), gpusvc.Call{Kernel: c.Kernel, Args: c.Args, OutShape: c.OutShape})
		if err != nil {
			return // e.g. float16 on the CPU backend
		}
		res, err := compat.Response(out, 0, lim)
		if err != nil {
			t.Fatalf("response of a call within the limits: %v", err)
		}
		if !slices.Equal(res.GetShape(), c.OutShape) || int64(len(res.GetValues())) != out.Elems() {
			t.Fatalf("response shape %v with %d values for output %v", res.GetShape(), len(res.GetValues()), c.OutShape)
		}
	})
}
