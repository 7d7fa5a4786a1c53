package compat

import (
	"math"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/gpumesh/gpumesh/gpusvc/cudapb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
)

// A google.protobuf.Struct decoded by proto.Unmarshal takes two heap
// objects per number (a Value and its oneof wrapper), and allocating them
// is most of what a cuda.CUDAService call costs the host. Wire keeps a
// request in its wire form instead and reads its arrays' numbers straight
// into tensor data, after the call is authorized.
//
// Only requests in the plain form every protobuf encoder writes take that
// path: each field once and of its declared type, no unknown fields, each
// Value with exactly one kind, at most maxParams distinct keys. ParseWire
// refuses anything else (ok false), and the caller decodes it with
// proto.Unmarshal as before. Any refusal of a Wire's call is produced by
// decoding it in full and running ToCall, so its errors are ToCall's,
// word for word.

// Field numbers of cuda.ComputeRequest and google.protobuf's Struct,
// Value and ListValue.
const (
	reqKernel = 1
	reqParams = 2
	reqGPU    = 3

	structFields = 1
	entryKey     = 1
	entryValue   = 2
	listValues   = 1

	valueNull   = 1
	valueNumber = 2
	valueString = 3
	valueBool   = 4
	valueStruct = 5
	valueList   = 6
)

// maxWireDepth bounds the nesting ParseWire follows; a request nested
// deeper is left to proto.Unmarshal (which has its own limit).
const maxWireDepth = 64

// Wire is a cuda.ComputeRequest kept in its wire form, checked by ParseWire.
type Wire struct {
	kernel, gpu string
	params      []wireParam
	b           []byte // the whole request, for the full decode of a refusal
}

// wireParam is one key of params and its Value's encoding.
type wireParam struct {
	key   string
	value []byte
}

// ParseWire checks that b is a cuda.ComputeRequest in the plain form (see
// above) that proto.Unmarshal would decode, and returns it, keeping b.
// It allocates only the kernel, gpu and at most maxParams keys. ok is false
// for any other b: decode it with proto.Unmarshal.
func ParseWire(b []byte) (w Wire, ok bool) {
	var seen [reqGPU + 1]bool
	for rest := b; len(rest) > 0; {
		num, typ, n := protowire.ConsumeTag(rest)
		if n < 0 || num < reqKernel || num > reqGPU || seen[num] || typ != protowire.BytesType {
			return Wire{}, false
		}
		seen[num] = true
		v, m := protowire.ConsumeBytes(rest[n:])
		if m < 0 {
			return Wire{}, false
		}
		rest = rest[n+m:]
		switch num {
		case reqKernel, reqGPU:
			if !utf8.Valid(v) {
				return Wire{}, false
			}
			if num == reqKernel {
				w.kernel = string(v)
			} else {
				w.gpu = string(v)
			}
		case reqParams:
			if w.params, ok = parseParams(v); !ok {
				return Wire{}, false
			}
		}
	}
	w.b = b
	return w, true
}

// parseParams checks a Struct's encoding and returns its entries.
func parseParams(b []byte) ([]wireParam, bool) {
	var params []wireParam
	for rest := b; len(rest) > 0; {
		entry, n, ok := field(rest, structFields, protowire.BytesType)
		if !ok || len(params) == maxParams {
			return nil, false
		}
		rest = rest[n:]
		key, value, ok := mapEntry(entry)
		if !ok || !checkValue(value, 1) {
			return nil, false
		}
		for _, p := range params {
			if string(key) == p.key {
				return nil, false
			}
		}
		params = append(params, wireParam{key: string(key), value: value})
	}
	return params, true
}

// field reads one field of b, which must have number num and type typ. It
// returns the field's bytes (for BytesType) and the bytes it took.
func field(b []byte, num protowire.Number, typ protowire.Type) (v []byte, n int, ok bool) {
	gotNum, gotTyp, n := protowire.ConsumeTag(b)
	if n < 0 || gotNum != num || gotTyp != typ {
		return nil, 0, false
	}
	if typ != protowire.BytesType {
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if m < 0 {
			return nil, 0, false
		}
		return b[n : n+m], n + m, true
	}
	v, m := protowire.ConsumeBytes(b[n:])
	if m < 0 {
		return nil, 0, false
	}
	return v, n + m, true
}

// mapEntry reads a Struct's map entry: a key and a value, once each.
func mapEntry(b []byte) (key, value []byte, ok bool) {
	var haveKey, haveValue bool
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || typ != protowire.BytesType {
			return nil, nil, false
		}
		v, m := protowire.ConsumeBytes(b[n:])
		if m < 0 {
			return nil, nil, false
		}
		b = b[n+m:]
		switch {
		case num == entryKey && !haveKey && utf8.Valid(v):
			key, haveKey = v, true
		case num == entryValue && !haveValue:
			value, haveValue = v, true
		default:
			return nil, nil, false
		}
	}
	return key, value, haveKey && haveValue
}

// valueKind reads a Value's one field: its kind and the field's bytes.
func valueKind(b []byte) (kind protowire.Number, v []byte, ok bool) {
	num, _, n := protowire.ConsumeTag(b)
	if n < 0 {
		return 0, nil, false
	}
	var want protowire.Type
	switch num {
	case valueNull, valueBool:
		want = protowire.VarintType
	case valueNumber:
		want = protowire.Fixed64Type
	case valueString, valueStruct, valueList:
		want = protowire.BytesType
	default:
		return 0, nil, false
	}
	v, m, ok := field(b, num, want)
	if !ok || m != len(b) {
		return 0, nil, false
	}
	return num, v, true
}

// checkValue checks a Value's encoding, and what it nests, to depth maxWireDepth.
func checkValue(b []byte, depth int) bool {
	kind, v, ok := valueKind(b)
	if !ok {
		return false
	}
	switch kind {
	case valueString:
		return utf8.Valid(v)
	case valueStruct, valueList:
		if depth == maxWireDepth {
			return false
		}
		for len(v) > 0 {
			var sub []byte
			var n int
			if kind == valueList {
				sub, n, ok = field(v, listValues, protowire.BytesType)
			} else {
				var entry []byte
				if entry, n, ok = field(v, structFields, protowire.BytesType); ok {
					_, sub, ok = mapEntry(entry)
				}
			}
			if !ok || !checkValue(sub, depth+1) {
				return false
			}
			v = v[n:]
		}
	}
	return true
}

// Kernel returns the request's kernel, as sent.
func (w Wire) Kernel() string { return w.kernel }

// Target is Target for a request in its wire form.
func (w Wire) Target() (kernelName, gpu string, err error) {
	return Target(&cudapb.ComputeRequest{Kernel: w.kernel, Gpu: w.gpu})
}

// ToCall is ToCall for a request in its wire form: the same call, or the
// same error.
func (w Wire) ToCall(lim Limits) (Call, error) {
	if call, ok := w.fastCall(lim); ok {
		return call, nil
	}
	var req cudapb.ComputeRequest
	if err := proto.Unmarshal(w.b, &req); err != nil { // ParseWire checked it
		return Call{}, invalid("decode the request: %v", err)
	}
	return ToCall(&req, lim)
}

// fastCall converts a request whose array params are read from the wire;
// ok is false where ToCall would refuse it, or may (the caller then runs
// ToCall for its error).
func (w Wire) fastCall(lim Limits) (Call, bool) {
	name, gpu, err := w.Target()
	if err != nil {
		return Call{}, false
	}
	names, _ := params(name)
	// Lists stand in params as empty ListValues; lists maps them to their encoding.
	fields := make(map[string]*structpb.Value, len(w.params))
	lists := make(map[*structpb.Value][]byte, len(names))
	for _, p := range w.params {
		kind, v, ok := valueKind(p.value)
		if !ok || kind == valueStruct {
			return Call{}, false
		}
		val := new(structpb.Value)
		if kind == valueList {
			val.Kind = &structpb.Value_ListValue{ListValue: &structpb.ListValue{}}
			lists[val] = v
		} else if proto.Unmarshal(p.value, val) != nil {
			return Call{}, false
		}
		fields[p.key] = val
	}
	values, _, dt, err := paramValues(name, names, &structpb.Struct{Fields: fields})
	if err != nil {
		return Call{}, false
	}
	args := make([]kernel.Arg, len(values))
	for i, v := range values {
		if list, isList := lists[v]; isList {
			t, ok := wireTensor(list, dt, lim.maxElements())
			if !ok {
				return Call{}, false
			}
			args[i] = kernel.Arg{Kind: kernel.ArgTensor, Tensor: t}
		} else if args[i], err = arg(v, "", dt, lim.maxElements()); err != nil {
			return Call{}, false
		}
	}
	call, err := finish(name, gpu, args, lim)
	return call, err == nil
}

// wireTensor is tensor for a ListValue's encoding: the shape is read from
// the first entry at each level and its size bounded by maxElems before
// the data is allocated. ok is false wherever tensor would refuse.
func wireTensor(list []byte, dt kernel.DType, maxElems int64) (kernel.Tensor, bool) {
	var shape []int64
	n := int64(1)
	for cur := list; ; {
		var first []byte
		count := int64(0)
		for rest := cur; len(rest) > 0; count++ {
			v, m, ok := field(rest, listValues, protowire.BytesType)
			if !ok {
				return kernel.Tensor{}, false
			}
			if count == 0 {
				first = v
			}
			rest = rest[m:]
		}
		if count == 0 || len(shape) == kernel.MaxDims || count > maxElems/n {
			return kernel.Tensor{}, false
		}
		shape = append(shape, count)
		n *= count
		kind, v, ok := valueKind(first)
		if !ok {
			return kernel.Tensor{}, false
		}
		if kind != valueList {
			break
		}
		cur = v
	}
	f := filler{shape: shape, dt: dt, data: make([]byte, n*int64(dt.Size()))}
	if !f.fillWire(list, 0) {
		return kernel.Tensor{}, false
	}
	return kernel.Tensor{DType: dt, Shape: shape, Data: f.data}, true
}

// fillWire is fill for a ListValue's encoding at the given depth.
func (f *filler) fillWire(list []byte, depth int) bool {
	last := depth == len(f.shape)-1
	want := f.shape[depth]
	i := int64(0)
	for ; len(list) > 0; i++ {
		v, m, ok := field(list, listValues, protowire.BytesType)
		if !ok || i == want {
			return false
		}
		list = list[m:]
		kind, x, ok := valueKind(v)
		switch {
		case !ok:
			return false
		case last && kind == valueNumber:
			bits, _ := protowire.ConsumeFixed64(x)
			if f.put(math.Float64frombits(bits)) != nil {
				return false
			}
		case !last && kind == valueList:
			if !f.fillWire(x, depth+1) {
				return false
			}
		default:
			return false
		}
	}
	return i == want
}
