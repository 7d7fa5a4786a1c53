package compat

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/gpumesh/gpumesh/gpusvc/cudapb"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
)

// Response converts a kernel's output to the door's response: the numbers
// nested by shape in result, and flat in values. An output over
// lim.MaxResultElements is refused with ResourceExhausted (ToCall refuses
// such calls before they run).
func Response(out kernel.Tensor, computeNanos int64, lim Limits) (*cudapb.ComputeResponse, error) {
	if len(out.Shape) == 0 || len(out.Shape) > kernel.MaxDims {
		return nil, status.Errorf(codes.Internal, "gpumesh: the kernel's output has shape %v", out.Shape)
	}
	max := lim.maxResultElements()
	n := int64(1)
	for _, d := range out.Shape {
		if d <= 0 {
			return nil, status.Errorf(codes.Internal, "gpumesh: the kernel's output has shape %v", out.Shape)
		}
		if d > max/n {
			return nil, status.Errorf(codes.ResourceExhausted,
				"gpumesh: the result has more than %d numbers (shape %v); cuda.CUDAService returns at most %d (gpumesh.v1.GPU takes larger ones)",
				max, out.Shape, max)
		}
		n *= d
	}
	size := out.DType.Size()
	if size == 0 {
		return nil, status.Errorf(codes.Internal, "gpumesh: the kernel's output has unknown dtype %d", out.DType)
	}
	if int64(len(out.Data)) != n*int64(size) {
		return nil, status.Errorf(codes.Internal, "gpumesh: the kernel's output has %d bytes for %s shape %v", len(out.Data), out.DType, out.Shape)
	}
	values := make([]float64, n)
	for i := range values {
		values[i] = number(out.DType, out.Data, i)
	}
	return &cudapb.ComputeResponse{
		Result:       nest(values, out.Shape),
		Shape:        append([]int64(nil), out.Shape...),
		Values:       values,
		Dtype:        out.DType.String(),
		ComputeNanos: computeNanos,
	}, nil
}

// ResponseFromPB converts a gpumesh.v1 ComputeResponse (its first output)
// to the door's response.
func ResponseFromPB(res *pb.ComputeResponse, lim Limits) (*cudapb.ComputeResponse, error) {
	outs := res.GetOutputs()
	if len(outs) == 0 {
		return nil, status.Error(codes.Internal, "gpumesh: the kernel returned no output")
	}
	t := outs[0]
	dt := kernel.DType(t.GetDtype())
	if t.GetDtype() == pb.DType_DTYPE_UNSPECIFIED {
		dt = kernel.Float32
	}
	return Response(kernel.Tensor{DType: dt, Shape: t.GetShape(), Data: t.GetData()}, res.GetComputeNanos(), lim)
}

// nest arranges values, row-major, as lists nested one level per
// dimension of shape. The number values are allocated in one block.
func nest(values []float64, shape []int64) *structpb.ListValue {
	nums := make([]structpb.Value, len(values))
	kinds := make([]structpb.Value_NumberValue, len(values))
	for i, v := range values {
		kinds[i].NumberValue = v
		nums[i].Kind = &kinds[i]
	}
	var build func(depth int, from int64) *structpb.ListValue
	stride := make([]int64, len(shape)) // numbers under one entry at each depth
	s := int64(1)
	for d := len(shape) - 1; d >= 0; d-- {
		stride[d] = s
		s *= shape[d]
	}
	build = func(depth int, from int64) *structpb.ListValue {
		lv := &structpb.ListValue{Values: make([]*structpb.Value, shape[depth])}
		for i := range lv.Values {
			at := from + int64(i)*stride[depth]
			if depth == len(shape)-1 {
				lv.Values[i] = &nums[at]
			} else {
				lv.Values[i] = &structpb.Value{Kind: &structpb.Value_ListValue{ListValue: build(depth+1, at)}}
			}
		}
		return lv
	}
	return build(0, 0)
}
