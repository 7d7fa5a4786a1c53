package kernel_test

import (
	"context"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
)

// FuzzComputeRequest decodes arbitrary bytes as a wire ComputeRequest,
// validates it, and runs what validates on the CPU backend: no input may
// panic or produce an output of the wrong size.
func FuzzComputeRequest(f *testing.F) {
	seed := func(name string, args ...kernel.Arg) {
		b, err := proto.Marshal(&pb.ComputeRequest{Kernel: name, Args: gpusvc.ArgsToPB(args)})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	t := func(shape []int64, v ...float32) kernel.Arg {
		return kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32(shape, v)}
	}
	seed("matrix_mul", t([]int64{1, 2}, 1, 2), t([]int64{2, 1}, 3, 4))
	seed("saxpy", kernel.Arg{Kind: kernel.ArgScalar, Scalar: 2}, t([]int64{2}, 1, 2), t([]int64{2}, 3, 4))
	seed("softmax", t([]int64{2, 2}, 1, 2, 3, 4))
	seed("transpose", t([]int64{1, 3}, 1, 2, 3))
	seed("relu", t([]int64{0}))
	f.Add([]byte{0x0a, 0x03, 'f', 'o', 'o'})

	b := cpu.New()
	f.Fuzz(func(t *testing.T, data []byte) {
		var req pb.ComputeRequest
		if proto.Unmarshal(data, &req) != nil {
			return
		}
		args := make([]kernel.Arg, 0, len(req.GetArgs()))
		for _, a := range req.GetArgs() {
			switch v := a.GetValue().(type) {
			case *pb.Arg_Tensor:
				args = append(args, kernel.Arg{Kind: kernel.ArgTensor, Tensor: gpusvc.TensorFromPB(v.Tensor)})
			case *pb.Arg_Scalar:
				args = append(args, kernel.Arg{Kind: kernel.ArgScalar, Scalar: v.Scalar})
			case *pb.Arg_Int:
				args = append(args, kernel.Arg{Kind: kernel.ArgInt, Int: v.Int})
			default:
				return
			}
		}
		shape, err := kernel.Check(req.GetKernel(), args)
		if err != nil {
			return
		}
		n := int64(1)
		for _, d := range shape {
			n *= d
		}
		if n > 1<<16 {
			return // valid but too big to compute in a fuzz iteration
		}
		for _, a := range args {
			if a.Kind == kernel.ArgTensor && a.Tensor.Elems() > 1<<16 {
				return
			}
		}
		out, err := b.Compute(context.Background(), gpusvc.Call{Kernel: req.GetKernel(), Args: args, OutShape: shape})
		if err != nil {
			return // e.g. float16 on the CPU backend
		}
		if int64(len(out.Data)) != n*4 {
			t.Fatalf("%s: output has %d bytes for shape %v", req.GetKernel(), len(out.Data), shape)
		}
	})
}

// TestNamesAndLookup: every name Names lists is a kernel Lookup finds, in
// order, and nothing else is.
func TestNamesAndLookup(t *testing.T) {
	names := kernel.Names()
	if !slices.IsSorted(names) {
		t.Errorf("Names() = %v, not sorted", names)
	}
	for _, n := range names {
		if s, ok := kernel.Lookup(n); !ok || s.Name != n || s.Check == nil {
			t.Errorf("Lookup(%q) = %+v, %v", n, s, ok)
		}
	}
	for _, n := range []string{"", "conv9d", "Relu", "custom:ptx"} {
		if _, ok := kernel.Lookup(n); ok {
			t.Errorf("Lookup(%q) found a kernel", n)
		}
	}
}
