package compat_test

import (
	"context"
	"encoding/binary"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/compat"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	"github.com/gpumesh/gpumesh/gpusvc/cudapb"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
)

// request builds a cuda.ComputeRequest from JSON, as grpcurl or any JSON
// client would send it (and as Python's Struct.update builds params).
func request(t testing.TB, js string) *cudapb.ComputeRequest {
	t.Helper()
	var req cudapb.ComputeRequest
	if err := protojson.Unmarshal([]byte(js), &req); err != nil {
		t.Fatalf("protojson %s: %v", js, err)
	}
	return &req
}

func f32(shape []int64, v ...float32) kernel.Tensor { return kernel.NewFloat32(shape, v) }

// TestToCall converts the requests a user would write into kernel calls.
func TestToCall(t *testing.T) {
	for _, tc := range []struct {
		name, js string
		kernel   string
		gpu      string
		args     []kernel.Arg
		out      []int64
	}{
		{
			name:   "the blog snippet's two matrices",
			js:     `{"kernel": "matrix_mul", "params": {"a": [[1, 2], [3, 4]], "b": [[5, 6], [7, 8]]}}`,
			kernel: "matrix_mul",
			args: []kernel.Arg{
				{Kind: kernel.ArgTensor, Tensor: f32([]int64{2, 2}, 1, 2, 3, 4)},
				{Kind: kernel.ArgTensor, Tensor: f32([]int64{2, 2}, 5, 6, 7, 8)},
			},
			out: []int64{2, 2},
		},
		{
			name:   "upper-case names, a gpu",
			js:     `{"kernel": "matrix_mul", "gpu": "1", "params": {"A": [[1, 2, 3]], "B": [[1], [2], [3]]}}`,
			kernel: "matrix_mul", gpu: "1",
			args: []kernel.Arg{
				{Kind: kernel.ArgTensor, Tensor: f32([]int64{1, 3}, 1, 2, 3)},
				{Kind: kernel.ArgTensor, Tensor: f32([]int64{3, 1}, 1, 2, 3)},
			},
			out: []int64{1, 1},
		},
		{
			name:   "by position",
			js:     `{"kernel": "matrix_mul", "params": {"args": [[[1, 2]], [[3], [4]]]}}`,
			kernel: "matrix_mul",
			args: []kernel.Arg{
				{Kind: kernel.ArgTensor, Tensor: f32([]int64{1, 2}, 1, 2)},
				{Kind: kernel.ArgTensor, Tensor: f32([]int64{2, 1}, 3, 4)},
			},
			out: []int64{1, 1},
		},
		{
			name:   "saxpy's scalar",
			js:     `{"kernel": "saxpy", "params": {"a": 2.5, "x": [1, 2, 3], "y": [4, 5, 6]}}`,
			kernel: "saxpy",
			args: []kernel.Arg{
				{Kind: kernel.ArgScalar, Scalar: 2.5},
				{Kind: kernel.ArgTensor, Tensor: f32([]int64{3}, 1, 2, 3)},
				{Kind: kernel.ArgTensor, Tensor: f32([]int64{3}, 4, 5, 6)},
			},
			out: []int64{3},
		},
		{
			name:   "relu of a 3-D array",
			js:     `{"kernel": "relu", "params": {"x": [[[1, -1]], [[-2, 2]]]}}`,
			kernel: "relu",
			args:   []kernel.Arg{{Kind: kernel.ArgTensor, Tensor: f32([]int64{2, 1, 2}, 1, -1, -2, 2)}},
			out:    []int64{2, 1, 2},
		},
		{
			name:   "reduce_sum",
			js:     `{"kernel": "reduce_sum", "params": {"x": [1, 2, 3, 4]}}`,
			kernel: "reduce_sum",
			args:   []kernel.Arg{{Kind: kernel.ArgTensor, Tensor: f32([]int64{4}, 1, 2, 3, 4)}},
			out:    []int64{1},
		},
		{
			name:   "transpose of int32",
			js:     `{"kernel": "transpose", "params": {"a": [[1, -2, 3]], "dtype": "int32"}}`,
			kernel: "transpose",
			args: []kernel.Arg{{Kind: kernel.ArgTensor, Tensor: kernel.Tensor{DType: kernel.Int32, Shape: []int64{1, 3},
				Data: le32(1, 0xfffffffe, 3)}}},
			out: []int64{3, 1},
		},
		{
			name:   "float16",
			js:     `{"kernel": "matrix_mul", "params": {"a": [[1, 0.5]], "b": [[-2], [65504]], "dtype": "Float16"}}`,
			kernel: "matrix_mul",
			args: []kernel.Arg{
				{Kind: kernel.ArgTensor, Tensor: kernel.Tensor{DType: kernel.Float16, Shape: []int64{1, 2}, Data: le16(0x3c00, 0x3800)}},
				{Kind: kernel.ArgTensor, Tensor: kernel.Tensor{DType: kernel.Float16, Shape: []int64{2, 1}, Data: le16(0xc000, 0x7bff)}},
			},
			out: []int64{1, 1},
		},
		{
			name:   "bfloat16, rounding to nearest even",
			js:     `{"kernel": "matrix_mul", "params": {"a": [[1, 1.00390625]], "b": [[-2], [1.01171875]], "dtype": "bfloat16"}}`,
			kernel: "matrix_mul",
			// 1+2⁻⁸ is halfway between 1 and 1+2⁻⁷: even is 1. 1+3·2⁻⁸ is halfway between 1+2⁻⁷ and 1+2⁻⁶: even is 1+2⁻⁶.
			args: []kernel.Arg{
				{Kind: kernel.ArgTensor, Tensor: kernel.Tensor{DType: kernel.BFloat16, Shape: []int64{1, 2}, Data: le16(0x3f80, 0x3f80)}},
				{Kind: kernel.ArgTensor, Tensor: kernel.Tensor{DType: kernel.BFloat16, Shape: []int64{2, 1}, Data: le16(0xc000, 0x3f82)}},
			},
			out: []int64{1, 1},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := request(t, tc.js)
			name, gpu, err := compat.Target(req)
			if err != nil || name != tc.kernel || gpu != tc.gpu {
				t.Fatalf("Target = %q, %q, %v; want %q, %q", name, gpu, err, tc.kernel, tc.gpu)
			}
			c, err := toCall(t, req, compat.Limits{})
			if err != nil {
				t.Fatalf("ToCall: %v", err)
			}
			if c.Kernel != tc.kernel || c.GPU != tc.gpu || !slices.Equal(c.OutShape, tc.out) {
				t.Errorf("call %q on gpu %q -> %v; want %q on %q -> %v", c.Kernel, c.GPU, c.OutShape, tc.kernel, tc.gpu, tc.out)
			}
			if len(c.Args) != len(tc.args) {
				t.Fatalf("%d args; want %d", len(c.Args), len(tc.args))
			}
			for i, a := range c.Args {
				w := tc.args[i]
				if a.Kind != w.Kind || a.Scalar != w.Scalar || a.Tensor.DType != w.Tensor.DType ||
					!slices.Equal(a.Tensor.Shape, w.Tensor.Shape) || !slices.Equal(a.Tensor.Data, w.Tensor.Data) {
					t.Errorf("arg %d = %+v; want %+v", i, a, w)
				}
			}
			// The same call through gpumesh.v1's wire form.
			r := c.Request()
			if r.GetKernel() != tc.kernel || r.GetGpu() != tc.gpu || len(r.GetArgs()) != len(tc.args) {
				t.Errorf("Request() = %v", r)
			}
		})
	}
}

func le32(v ...uint32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], x)
	}
	return b
}

func le16(v ...uint16) []byte {
	b := make([]byte, 2*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint16(b[2*i:], x)
	}
	return b
}

// TestToCallRefuses: every malformed request gets a status error with the
// right code, and a message that names what is wrong, where.
func TestToCallRefuses(t *testing.T) {
	deep := "[1]"
	for range kernel.MaxDims {
		deep = "[" + deep + "]"
	}
	long := strings.Repeat("k", 10000)
	for _, tc := range []struct {
		name, js string
		lim      compat.Limits
		code     codes.Code
		want     []string
	}{
		{"unknown kernel", `{"kernel": "fft", "params": {}}`, compat.Limits{}, codes.InvalidArgument,
			[]string{`unknown kernel "fft"`, "matrix_mul", "transpose"}},
		{"a kernel name of 10000 bytes is quoted short", `{"kernel": "` + long + `"}`, compat.Limits{}, codes.InvalidArgument,
			[]string{"unknown kernel", "... (10000 bytes)"}},
		{"a long gpu", `{"kernel": "relu", "gpu": "` + long + `"}`, compat.Limits{}, codes.InvalidArgument,
			[]string{"gpu", "longer than 128 bytes"}},
		{"no params", `{"kernel": "matrix_mul"}`, compat.Limits{}, codes.InvalidArgument,
			[]string{`params lacks "a", "b"`, `matrix_mul takes "a", "b" (or "args": [a, b])`}},
		{"a missing matrix", `{"kernel": "matrix_mul", "params": {"a": [[1]]}}`, compat.Limits{}, codes.InvalidArgument,
			[]string{`params lacks "b"`}},
		{"an unknown name", `{"kernel": "matrix_mul", "params": {"a": [[1]], "b": [[1]], "c": [[1]]}}`, compat.Limits{}, codes.InvalidArgument,
			[]string{`params has "c", which matrix_mul does not take`}},
		{"one name twice", `{"kernel": "relu", "params": {"x": [1], "X": [2]}}`, compat.Limits{}, codes.InvalidArgument,
			[]string{`params "X" and "x" name the same parameter`}},
		{"args and names", `{"kernel": "relu", "params": {"x": [1], "args": [[1]]}}`, compat.Limits{}, codes.InvalidArgument,
			[]string{`params has "args" and named parameters`}},
		{"args not a list", `{"kernel": "relu", "params": {"args": 3}}`, compat.Limits{}, codes.InvalidArgument,
			[]string{"params.args: the number 3; want a list of the arguments"}},
		{"too many args, refused before any is converted", `{"kernel": "relu", "params": {"args": [[1], [[[[[[[[[1]]]]]]]]]]}}`, compat.Limits{}, codes.InvalidArgument,
			[]string{`relu: params.args has 2 entries; relu takes "x" (or "args": [x])`}},
		{"a ragged matrix", `{"kernel": "matrix_mul", "params": {"a": [[1, 2]], "b": [[1, 2], [3, 4, 5]]}}`, compat.Limits{}, codes.InvalidArgument,
			[]string{"matrix_mul: params.b[1]: 3 entries, want 2 (arrays are rectangular: shape [2 2])"}},
		{"a number where a row belongs", `{"kernel": "relu", "params": {"x": [[1, 2], 3]}}`, compat.Limits{}, codes.InvalidArgument,
			[]string{"relu: params.x[1]: the number 3; want a list (shape [2 2])"}},
		{"a row where a number belongs", `{"kernel": "relu", "params": {"x": [1, [2]]}}`, compat.Limits{}, codes.InvalidArgument,
			[]string{"relu: params.x[1]: a list; want a number (shape [2])"}},
		{"a string in a matrix", `{"kernel": "relu", "params": {"x": [[1, "2"]]}}`, compat.Limits{}, codes.InvalidArgument,
			[]string{`relu: params.x[0][1]: a string "2"; want a number`}},
		{"a bool", `{"kernel": "relu", "params": {"x": true}}`, compat.Limits{}, codes.InvalidArgument,
			[]string{"relu: params.x: true; want a number or a list of numbers"}},
		{"null", `{"kernel": "relu", "params": {"x": null}}`, compat.Limits{}, codes.InvalidArgument,
			[]string{"params.x: null"}},
		{"an object", `{"kernel": "relu", "params": {"x": {"data": [1]}}}`, compat.Limits{}, codes.InvalidArgument,
			[]string{"params.x: an object"}},
		{"an empty list", `{"kernel": "relu", "params": {"x": []}}`, compat.Limits{}, codes.InvalidArgument,
			[]string{"relu: params.x: an empty list"}},
		{"an empty row", `{"kernel": "relu", "params": {"x": [[]]}}`, compat.Limits{}, codes.InvalidArgument,
			[]string{"relu: params.x[0]: an empty list"}},
		{"nine dimensions", `{"kernel": "relu", "params": {"x": ` + deep + `}}`, compat.Limits{}, codes.InvalidArgument,
			[]string{"nested more than 8 deep"}},
		{"an array over the limit", `{"kernel": "relu", "params": {"x": [[1, 2, 3], [4, 5, 6]]}}`, compat.Limits{MaxElements: 5}, codes.ResourceExhausted,
			[]string{"relu: params.x: more than 5 numbers (shape [2 3]...)", "at most 5 per array"}},
		{"a result over the limit, refused before it runs", `{"kernel": "matrix_mul", "params": {"a": [[1], [2], [3]], "b": [[1, 2, 3]]}}`,
			compat.Limits{MaxResultElements: 8}, codes.ResourceExhausted,
			[]string{"the result would have 9 numbers (shape [3 3])", "at most 8"}},
		{"the kernel's own check", `{"kernel": "matrix_mul", "params": {"a": [[1, 2]], "b": [[1, 2]]}}`, compat.Limits{}, codes.InvalidArgument,
			[]string{"matrix_mul: inner dimensions differ"}},
		{"a scalar for a matrix", `{"kernel": "matrix_mul", "params": {"a": 1, "b": [[1]]}}`, compat.Limits{}, codes.InvalidArgument,
			[]string{"must be a tensor or buffer"}},
		{"int32 takes whole numbers", `{"kernel": "transpose", "params": {"a": [[1, 2.5]], "dtype": "int32"}}`, compat.Limits{}, codes.InvalidArgument,
			[]string{"transpose: params.a[0][1]: 2.5 is not a whole number within int32"}},
		{"int32's range", `{"kernel": "transpose", "params": {"a": [[3e9]], "dtype": "int32"}}`, compat.Limits{}, codes.InvalidArgument,
			[]string{"3e+09 is not a whole number within int32"}},
		{"an unknown dtype", `{"kernel": "relu", "params": {"x": [1], "dtype": "float64"}}`, compat.Limits{}, codes.InvalidArgument,
			[]string{`params.dtype: dtype "float64": want float32, float16, bfloat16 or int32`}},
		{"a dtype not a string", `{"kernel": "relu", "params": {"x": [1], "dtype": 32}}`, compat.Limits{}, codes.InvalidArgument,
			[]string{"params.dtype: the number 32; want a string"}},
		{"a long key", `{"kernel": "relu", "params": {"` + long + `": 1}}`, compat.Limits{}, codes.InvalidArgument,
			[]string{"params key", "longer than 128 bytes"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := toCall(t, request(t, tc.js), tc.lim)
			st, ok := status.FromError(err)
			if err == nil || !ok || st.Code() != tc.code {
				t.Fatalf("ToCall = %v; want a %v status", err, tc.code)
			}
			for _, w := range tc.want {
				if !strings.Contains(st.Message(), w) {
					t.Errorf("message %q lacks %q", st.Message(), w)
				}
			}
			if len(st.Message()) > 600 {
				t.Errorf("message of %d bytes: %.200q...", len(st.Message()), st.Message())
			}
		})
	}
}

// TestToCallTooManyKeys: params with more keys than any kernel takes are
// refused before the keys are looked at.
func TestToCallTooManyKeys(t *testing.T) {
	s := &structpb.Struct{Fields: map[string]*structpb.Value{}}
	for i := range 17 {
		s.Fields[strings.Repeat("k", i+1)] = structpb.NewNumberValue(1)
	}
	_, err := toCall(t, &cudapb.ComputeRequest{Kernel: "relu", Params: s}, compat.Limits{})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "params has 17 keys; at most 16") {
		t.Fatalf("ToCall = %v", err)
	}
}

// TestParamsCoverBuiltins: the door takes every built-in kernel, and only
// those (a new kernel needs its parameter names here).
func TestParamsCoverBuiltins(t *testing.T) {
	for _, name := range kernel.Names() {
		if _, _, err := compat.Target(&cudapb.ComputeRequest{Kernel: name}); err != nil {
			t.Errorf("built-in %q: %v", name, err)
		}
	}
	for _, name := range []string{"matrix_mul", "saxpy", "reduce_sum", "softmax", "relu", "transpose"} {
		if _, ok := kernel.Lookup(name); !ok {
			t.Errorf("compat takes %q, which is no built-in", name)
		}
	}
}

// TestResponse converts outputs of each dtype back.
func TestResponse(t *testing.T) {
	for _, tc := range []struct {
		name   string
		out    kernel.Tensor
		result string // the result as JSON
		dtype  string
	}{
		{"a 2×2 product", f32([]int64{2, 2}, 19, 22, 43, 50), `[[19,22],[43,50]]`, "float32"},
		{"reduce_sum's [1]", f32([]int64{1}, 10), `[10]`, "float32"},
		{"a 2×1×3", f32([]int64{2, 1, 3}, 1, 2, 3, 4, 5, 6), `[[[1,2,3]],[[4,5,6]]]`, "float32"},
		{"float16", kernel.Tensor{DType: kernel.Float16, Shape: []int64{2}, Data: le16(0x3c00, 0xc000)}, `[1,-2]`, "float16"},
		{"bfloat16", kernel.Tensor{DType: kernel.BFloat16, Shape: []int64{2}, Data: le16(0x3f80, 0x3f82)}, `[1,1.015625]`, "bfloat16"},
		{"int32", kernel.Tensor{DType: kernel.Int32, Shape: []int64{1, 2}, Data: le32(7, 0xffffffff)}, `[[7,-1]]`, "int32"},
		{"uint8", kernel.Tensor{DType: kernel.Uint8, Shape: []int64{3}, Data: []byte{0, 1, 255}}, `[0,1,255]`, "uint8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := compat.Response(tc.out, 42, compat.Limits{})
			if err != nil {
				t.Fatal(err)
			}
			got, err := protojson.Marshal(res.GetResult())
			if err != nil {
				t.Fatal(err)
			}
			if strings.ReplaceAll(string(got), " ", "") != tc.result {
				t.Errorf("result %s; want %s", got, tc.result)
			}
			if res.GetDtype() != tc.dtype || res.GetComputeNanos() != 42 || !slices.Equal(res.GetShape(), tc.out.Shape) {
				t.Errorf("dtype %q, nanos %d, shape %v", res.GetDtype(), res.GetComputeNanos(), res.GetShape())
			}
			if int64(len(res.GetValues())) != tc.out.Elems() {
				t.Errorf("%d values; want %d", len(res.GetValues()), tc.out.Elems())
			}
		})
	}
}

// TestResponseRefuses: an output over the limit, or one whose bytes do not
// match its shape, is an error rather than a wrong answer.
func TestResponseRefuses(t *testing.T) {
	big := f32([]int64{3, 3}, make([]float32, 9)...)
	if _, err := compat.Response(big, 0, compat.Limits{MaxResultElements: 8}); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("9 numbers over a limit of 8: %v", err)
	}
	short := kernel.Tensor{DType: kernel.Float32, Shape: []int64{2, 2}, Data: make([]byte, 12)}
	if _, err := compat.Response(short, 0, compat.Limits{}); status.Code(err) != codes.Internal {
		t.Errorf("12 bytes for a 2×2 float32: %v", err)
	}
	huge := kernel.Tensor{DType: kernel.Float32, Shape: []int64{1 << 40, 1 << 40}}
	if _, err := compat.Response(huge, 0, compat.Limits{}); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("shape 2⁴⁰×2⁴⁰: %v", err)
	}
	if _, err := compat.ResponseFromPB(&pb.ComputeResponse{}, compat.Limits{}); status.Code(err) != codes.Internal {
		t.Errorf("no outputs: %v", err)
	}
}

// TestRoundTripOnCPU runs the blog snippet's request on the CPU backend,
// through both conversions and gpumesh.v1's wire form.
func TestRoundTripOnCPU(t *testing.T) {
	req := request(t, `{"kernel": "matrix_mul", "params": {"a": [[1, 2], [3, 4]], "b": [[5, 6], [7, 8]]}}`)
	// As the Python client sends it: the request goes over the wire.
	b, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	var wire cudapb.ComputeRequest
	if err := proto.Unmarshal(b, &wire); err != nil {
		t.Fatal(err)
	}
	c, err := compat.ToCall(&wire, compat.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	var args []kernel.Arg
	for _, a := range c.Request().GetArgs() {
		args = append(args, kernel.Arg{Kind: kernel.ArgTensor, Tensor: gpusvc.TensorFromPB(a.GetTensor())})
	}
	backend := cpu.New()
	defer backend.Close()
	out, err := backend.Compute(context.Background(), gpusvc.Call{Kernel: c.Kernel, Args: args, OutShape: c.OutShape})
	if err != nil {
		t.Fatal(err)
	}
	res, err := compat.ResponseFromPB(&pb.ComputeResponse{Outputs: []*pb.Tensor{gpusvc.TensorToPB(out)}, ComputeNanos: 7}, compat.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.GetValues(), []float64{19, 22, 43, 50}) || !slices.Equal(res.GetShape(), []int64{2, 2}) {
		t.Errorf("values %v shape %v; want [19 22 43 50] [2 2]", res.GetValues(), res.GetShape())
	}
	rows := res.GetResult().GetValues()
	if len(rows) != 2 || rows[1].GetListValue().GetValues()[0].GetNumberValue() != 43 {
		t.Errorf("result %v", res.GetResult())
	}
}
