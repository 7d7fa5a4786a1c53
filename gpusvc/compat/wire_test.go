package compat_test

import (
	"math"
	"slices"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/gpumesh/gpumesh/gpusvc/compat"
	"github.com/gpumesh/gpumesh/gpusvc/cudapb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
)

// toCall is compat.ToCall, checked against the same request in its wire
// form (what the server converts): ParseWire takes it (unless params has
// more keys than any kernel takes), and Wire.ToCall returns the same call
// or the same error.
func toCall(t testing.TB, req *cudapb.ComputeRequest, lim compat.Limits) (compat.Call, error) {
	t.Helper()
	c, err := compat.ToCall(req, lim)
	b, merr := proto.Marshal(req)
	if merr != nil {
		t.Fatal(merr)
	}
	w, ok := compat.ParseWire(b)
	if !ok {
		if len(req.GetParams().GetFields()) <= 16 {
			t.Fatalf("ParseWire refuses proto.Marshal's encoding of %v", req)
		}
		return c, err
	}
	sameConversion(t, req, w, lim)
	return c, err
}

// sameConversion fails t unless w converts as req does.
func sameConversion(t testing.TB, req *cudapb.ComputeRequest, w compat.Wire, lim compat.Limits) {
	t.Helper()
	if w.Kernel() != req.GetKernel() {
		t.Fatalf("Wire.Kernel() = %q; want %q", w.Kernel(), req.GetKernel())
	}
	k1, g1, err1 := compat.Target(req)
	k2, g2, err2 := w.Target()
	if k1 != k2 || g1 != g2 || errText(err1) != errText(err2) {
		t.Fatalf("Wire.Target() = %q, %q, %v; Target = %q, %q, %v", k2, g2, err2, k1, g1, err1)
	}
	c1, err1 := compat.ToCall(req, lim)
	c2, err2 := w.ToCall(lim)
	if errText(err1) != errText(err2) {
		t.Fatalf("Wire.ToCall: %v; ToCall: %v", err2, err1)
	}
	if !sameCall(c1, c2) {
		t.Fatalf("Wire.ToCall = %+v; ToCall = %+v", c2, c1)
	}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func sameCall(a, b compat.Call) bool {
	if a.Kernel != b.Kernel || a.GPU != b.GPU || !slices.Equal(a.OutShape, b.OutShape) || len(a.Args) != len(b.Args) {
		return false
	}
	for i, x := range a.Args {
		y := b.Args[i]
		if x.Kind != y.Kind || math.Float64bits(x.Scalar) != math.Float64bits(y.Scalar) || x.Tensor.DType != y.Tensor.DType ||
			!slices.Equal(x.Tensor.Shape, y.Tensor.Shape) || !slices.Equal(x.Tensor.Data, y.Tensor.Data) {
			return false
		}
	}
	return true
}

// TestParseWireLeavesTheRest: encodings other than the plain one (a field
// twice, an unknown field, a Value of two kinds, a wrong wire type) are
// left to proto.Unmarshal.
func TestParseWireLeavesTheRest(t *testing.T) {
	plain, err := proto.Marshal(request(t, `{"kernel": "relu", "params": {"x": [1, 2]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := compat.ParseWire(plain); !ok {
		t.Fatal("ParseWire refuses a plain request")
	}
	tag := func(b []byte, num protowire.Number, typ protowire.Type) []byte {
		return protowire.AppendTag(b, num, typ)
	}
	kernelTwice := protowire.AppendString(tag(slices.Clone(plain), 1, protowire.BytesType), "softmax")
	unknown := protowire.AppendVarint(tag(slices.Clone(plain), 9, protowire.VarintType), 1)
	// params {"x": Value{number 1, string "a"}}
	value := protowire.AppendString(tag(protowire.AppendFixed64(tag(nil, 2, protowire.Fixed64Type), math.Float64bits(1)), 3, protowire.BytesType), "a")
	entry := protowire.AppendBytes(tag(protowire.AppendString(tag(nil, 1, protowire.BytesType), "x"), 2, protowire.BytesType), value)
	twoKinds := protowire.AppendBytes(tag(protowire.AppendString(tag(nil, 1, protowire.BytesType), "relu"), 2, protowire.BytesType),
		protowire.AppendBytes(tag(nil, 1, protowire.BytesType), entry))
	numberAsVarint := []byte{0x0a, 4, 'r', 'e', 'l', 'u', 0x12, 7, 0x0a, 5, 0x0a, 1, 'x', 0x12, 0, 0x10, 1}
	badUTF8 := []byte{0x0a, 2, 0xff, 0xfe}
	for name, b := range map[string][]byte{
		"a field twice": kernelTwice, "an unknown field": unknown, "a value of two kinds": twoKinds,
		"a number as a varint": numberAsVarint, "a kernel not UTF-8": badUTF8, "truncated": plain[:len(plain)-1],
	} {
		if _, ok := compat.ParseWire(b); ok {
			t.Errorf("%s: ParseWire takes % x", name, b)
		}
	}
}

// FuzzWire: ParseWire takes only what proto.Unmarshal decodes, and a
// request it takes converts as the decoded request does: the same call,
// or the same error, word for word.
func FuzzWire(f *testing.F) {
	for _, js := range []string{
		`{"kernel": "matrix_mul", "params": {"a": [[1, 2], [3, 4]], "b": [[5, 6], [7, 8]]}}`,
		`{"kernel": "matrix_mul", "params": {"args": [[[1, 2]], [[3], [4]]], "dtype": "float16"}}`,
		`{"kernel": "matrix_mul", "params": {"a": [[1, 2]], "b": [[1, 2], [3, 4, 5]]}}`,
		`{"kernel": "saxpy", "params": {"a": 2, "x": [1, 2, 3], "y": [4, 5, 6]}}`,
		`{"kernel": "transpose", "params": {"a": [[1, 2.5]], "dtype": "int32"}}`,
		`{"kernel": "reduce_sum", "params": {"X": [[[1]], [[2]]], "x": [1]}}`,
		`{"kernel": "relu", "params": {"x": [[[[[[[[[1]]]]]]]]]}}`,
		`{"kernel": "relu", "params": {"x": [1, [2]], "dtype": "bfloat16"}}`,
		`{"kernel": "relu", "params": {"x": {"y": [null, true, "s"]}}}`,
	} {
		b, err := proto.Marshal(request(f, js))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	lim := compat.Limits{MaxElements: 1 << 12, MaxResultElements: 1 << 12}
	f.Fuzz(func(t *testing.T, data []byte) {
		var req cudapb.ComputeRequest
		decodeErr := proto.Unmarshal(data, &req)
		w, ok := compat.ParseWire(data)
		if !ok {
			return
		}
		if decodeErr != nil {
			t.Fatalf("ParseWire takes what proto.Unmarshal refuses (%v): % x", decodeErr, data)
		}
		sameConversion(t, &req, w, lim)
		if c, err := w.ToCall(lim); err == nil {
			if _, err := kernel.Check(c.Kernel, c.Args); err != nil {
				t.Fatalf("converted call fails its kernel's check: %v", err)
			}
		}
	})
}
