// Package compat converts calls of cuda.CUDAService, gpumesh's compatibility
// door for clients written the way remote-GPU posts show them (gpusvc/cudapb,
// generated from examples/cuda/cuda.proto), into gpumesh kernel calls, and
// kernel results back into the door's responses.
//
// It is pure: no I/O, no identity, no policy. The server identifies and
// authorizes the caller and runs the converted call through its own
// pipeline, so the door shares the endpoint's policy, quotas, QoS and audit.
// A server uses it in the order of any request:
//
//	name, gpu, err := compat.Target(req)   // bound and resolve, allocates nothing
//	... authorize name on gpu for the caller ...
//	call, err := compat.ToCall(req, lim)   // bound every param, then allocate
//	out, err := backend.Compute(..., call.Kernel, call.Args, call.OutShape)
//	res, err := compat.Response(out, nanos, lim)
//
// or, running the gpumesh.v1 Compute path itself, call.Request() and
// compat.ResponseFromPB. Errors are gRPC status errors: InvalidArgument for a
// malformed request (the message names the param, e.g. "params.b[1]: 3
// numbers, want 2"), ResourceExhausted for an array or result over Limits.
//
// compat imports gpusvc/kernel and the generated gpumeshpb and cudapb only:
// no overlay, policy or server code.
package compat

import (
	"fmt"
	"math"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/gpumesh/gpumesh/gpusvc/cudapb"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
)

// DefaultMaxElements bounds one array param, and a result, when Limits sets
// none: 1,048,576 numbers (a 1024×1024 matrix). As Struct values they take
// about 9 bytes each on the wire and several times that in memory, so the
// door is for small and medium calls; gpumesh.v1.GPU carries large tensors
// as raw bytes.
const DefaultMaxElements = 1 << 20

const (
	// maxParams bounds the keys of params.
	maxParams = 16
	// maxName bounds the kernel, gpu, dtype and key strings.
	maxName = 128
)

// Limits bound what one call through the door may carry. The zero value
// uses the defaults.
type Limits struct {
	// MaxElements bounds the numbers of one array param. 0 means DefaultMaxElements.
	MaxElements int64
	// MaxResultElements bounds the numbers of a result, checked before the
	// kernel runs. 0 means DefaultMaxElements.
	MaxResultElements int64
}

func (l Limits) maxElements() int64 {
	if l.MaxElements > 0 {
		return l.MaxElements
	}
	return DefaultMaxElements
}

func (l Limits) maxResultElements() int64 {
	if l.MaxResultElements > 0 {
		return l.MaxResultElements
	}
	return DefaultMaxElements
}

// Call is a cuda.ComputeRequest resolved to a gpumesh kernel call.
type Call struct {
	// Kernel is the built-in's name.
	Kernel string
	// GPU is the request's GPU ("" for the default), as gpumesh.v1 takes it.
	GPU string
	// Args are the kernel's arguments, in order.
	Args []kernel.Arg
	// OutShape is the result's shape, from kernel.Check.
	OutShape []int64
}

// Request returns c as a gpumesh.v1 ComputeRequest, sharing c's tensor data.
func (c Call) Request() *pb.ComputeRequest {
	args := make([]*pb.Arg, len(c.Args))
	for i, a := range c.Args {
		switch a.Kind {
		case kernel.ArgTensor:
			args[i] = &pb.Arg{Value: &pb.Arg_Tensor{Tensor: &pb.Tensor{Dtype: pb.DType(a.Tensor.DType), Shape: a.Tensor.Shape, Data: a.Tensor.Data}}}
		case kernel.ArgScalar:
			args[i] = &pb.Arg{Value: &pb.Arg_Scalar{Scalar: a.Scalar}}
		default: // ToCall makes no other kind
			args[i] = &pb.Arg{}
		}
	}
	return &pb.ComputeRequest{Kernel: c.Kernel, Gpu: c.GPU, Args: args}
}

// params returns a built-in kernel's parameter names, in order: the keys of
// a request's params.
func params(name string) ([]string, bool) {
	switch name {
	case "matrix_mul":
		return []string{"a", "b"}, true
	case "saxpy":
		return []string{"a", "x", "y"}, true
	case "reduce_sum", "softmax", "relu":
		return []string{"x"}, true
	case "transpose":
		return []string{"a"}, true
	}
	return nil, false
}

func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, "gpumesh: "+format, args...)
}

// quote quotes s for an error message, at most maxName bytes of it.
func quote(s string) string {
	if len(s) > maxName {
		return fmt.Sprintf("%q... (%d bytes)", s[:maxName], len(s))
	}
	return fmt.Sprintf("%q", s)
}

// Target returns the request's kernel and GPU, checked: what a server
// authorizes before it converts the params. It allocates nothing.
func Target(req *cudapb.ComputeRequest) (kernelName, gpu string, err error) {
	name, gpu := req.GetKernel(), req.GetGpu()
	if len(gpu) > maxName {
		return "", "", invalid("gpu %s is longer than %d bytes", quote(gpu), maxName)
	}
	if _, ok := params(name); !ok {
		return "", "", invalid("unknown kernel %s (built-ins: %s)", quote(name), strings.Join(kernel.Names(), ", "))
	}
	return name, gpu, nil
}

// ToCall converts a request to a kernel call: every param is bounded by lim
// before it is allocated, the call is checked against the kernel's
// signature, and its result's size against lim.MaxResultElements.
func ToCall(req *cudapb.ComputeRequest, lim Limits) (Call, error) {
	name, gpu, err := Target(req)
	if err != nil {
		return Call{}, err
	}
	names, _ := params(name)
	values, paths, dt, err := paramValues(name, names, req.GetParams())
	if err != nil {
		return Call{}, err
	}
	args := make([]kernel.Arg, len(values))
	for i, v := range values {
		if args[i], err = arg(v, name+": "+paths[i], dt, lim.maxElements()); err != nil {
			return Call{}, err
		}
	}
	return finish(name, gpu, args, lim)
}

// finish checks a call's arguments against its kernel's signature, and its
// result's size against lim.MaxResultElements.
func finish(name, gpu string, args []kernel.Arg, lim Limits) (Call, error) {
	shape, err := kernel.Check(name, args)
	if err != nil {
		return Call{}, invalid("%v", err)
	}
	n := int64(1)
	for _, d := range shape {
		if d > 0 && n > math.MaxInt64/d {
			n = math.MaxInt64
			break
		}
		n *= d
	}
	if max := lim.maxResultElements(); n > max {
		return Call{}, status.Errorf(codes.ResourceExhausted,
			"gpumesh: %s: the result would have %d numbers (shape %v); cuda.CUDAService returns at most %d (gpumesh.v1.GPU takes larger ones)",
			name, n, shape, max)
	}
	return Call{Kernel: name, GPU: gpu, Args: args, OutShape: shape}, nil
}

// paramValues returns the kernel's arguments from params, in order, with
// the path of each for error messages, and the dtype params asks for.
func paramValues(name string, names []string, s *structpb.Struct) (values []*structpb.Value, paths []string, dt kernel.DType, err error) {
	fields := s.GetFields()
	if len(fields) > maxParams {
		return nil, nil, 0, invalid("%s: params has %d keys; at most %d", name, len(fields), maxParams)
	}
	keys := make([]string, 0, len(fields))
	for k := range fields {
		if len(k) > maxName {
			return nil, nil, 0, invalid("%s: params key %s is longer than %d bytes", name, quote(k), maxName)
		}
		keys = append(keys, k)
	}
	slices.Sort(keys) // so that the first error is the same every time
	// byName maps each canonical (lower-case) name to the key as sent.
	byName := make(map[string]string, len(keys))
	for _, k := range keys {
		c := strings.ToLower(k)
		if prev, ok := byName[c]; ok {
			return nil, nil, 0, invalid("%s: params %s and %s name the same parameter", name, quote(prev), quote(k))
		}
		byName[c] = k
	}
	want := func() string {
		return fmt.Sprintf("%s takes %s (or \"args\": [%s]) and an optional \"dtype\"",
			name, `"`+strings.Join(names, `", "`)+`"`, strings.Join(names, ", "))
	}

	dt = kernel.Float32
	if k, ok := byName["dtype"]; ok {
		v := fields[k]
		sv, isString := v.GetKind().(*structpb.Value_StringValue)
		if !isString {
			return nil, nil, 0, invalid("%s: params.%s: %s; want a string: float32, float16, bfloat16 or int32", name, k, kindOf(v))
		}
		if dt, err = parseDType(sv.StringValue); err != nil {
			return nil, nil, 0, invalid("%s: params.%s: %v", name, k, err)
		}
		delete(byName, "dtype")
	}

	if k, ok := byName["args"]; ok {
		if len(byName) > 1 {
			return nil, nil, 0, invalid("%s: params has \"args\" and named parameters; %s", name, want())
		}
		lv, isList := fields[k].GetKind().(*structpb.Value_ListValue)
		if !isList {
			return nil, nil, 0, invalid("%s: params.%s: %s; want a list of the arguments", name, k, kindOf(fields[k]))
		}
		if n := len(lv.ListValue.GetValues()); n != len(names) {
			return nil, nil, 0, invalid("%s: params.%s has %d entries; %s", name, k, n, want())
		}
		values = lv.ListValue.GetValues()
		for i := range values {
			paths = append(paths, fmt.Sprintf("params.%s[%d]", k, i))
		}
		return values, paths, dt, nil
	}

	var missing []string
	for _, n := range names {
		k, ok := byName[n]
		if !ok {
			missing = append(missing, `"`+n+`"`)
			continue
		}
		values = append(values, fields[k])
		paths = append(paths, "params."+k)
		delete(byName, n)
	}
	for _, k := range keys {
		if _, extra := byName[strings.ToLower(k)]; extra {
			return nil, nil, 0, invalid("%s: params has %s, which %s does not take; %s", name, quote(k), name, want())
		}
	}
	if len(missing) > 0 {
		return nil, nil, 0, invalid("%s: params lacks %s; %s", name, strings.Join(missing, ", "), want())
	}
	return values, paths, dt, nil
}

func parseDType(s string) (kernel.DType, error) {
	switch strings.ToLower(s) {
	case "float32":
		return kernel.Float32, nil
	case "float16":
		return kernel.Float16, nil
	case "bfloat16":
		return kernel.BFloat16, nil
	case "int32":
		return kernel.Int32, nil
	}
	return 0, fmt.Errorf("dtype %s: want float32, float16, bfloat16 or int32", quote(s))
}

// kindOf names a value's kind for error messages.
func kindOf(v *structpb.Value) string {
	switch k := v.GetKind().(type) {
	case *structpb.Value_NumberValue:
		return fmt.Sprintf("the number %g", k.NumberValue)
	case *structpb.Value_StringValue:
		return "a string " + quote(k.StringValue)
	case *structpb.Value_BoolValue:
		return fmt.Sprintf("%t", k.BoolValue)
	case *structpb.Value_NullValue:
		return "null"
	case *structpb.Value_StructValue:
		return "an object"
	case *structpb.Value_ListValue:
		return "a list"
	}
	return "an empty value"
}

// arg converts one param: a number is a scalar, a nested list an array.
func arg(v *structpb.Value, path string, dt kernel.DType, maxElems int64) (kernel.Arg, error) {
	switch k := v.GetKind().(type) {
	case *structpb.Value_NumberValue:
		return kernel.Arg{Kind: kernel.ArgScalar, Scalar: k.NumberValue}, nil
	case *structpb.Value_ListValue:
		t, err := tensor(k.ListValue, path, dt, maxElems)
		if err != nil {
			return kernel.Arg{}, err
		}
		return kernel.Arg{Kind: kernel.ArgTensor, Tensor: t}, nil
	}
	return kernel.Arg{}, invalid("%s: %s; want a number or a list of numbers", path, kindOf(v))
}
