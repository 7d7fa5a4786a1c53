package compat

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"

	"github.com/x448/float16"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/gpumesh/gpumesh/gpusvc/kernel"
)

// tensor converts nested lists of numbers to a tensor of dtype dt. The
// shape is read from the first element at each level and its size bounded
// by maxElems before the data is allocated; filling it then checks that
// every list has its level's length.
func tensor(lv *structpb.ListValue, path string, dt kernel.DType, maxElems int64) (kernel.Tensor, error) {
	var shape []int64
	n := int64(1)
	for cur := lv; ; {
		vs := cur.GetValues()
		if len(vs) == 0 {
			return kernel.Tensor{}, invalid("%s%s: an empty list; arrays need at least one number in each dimension", path, strings.Repeat("[0]", len(shape)))
		}
		if len(shape) == kernel.MaxDims {
			return kernel.Tensor{}, invalid("%s: lists nested more than %d deep; arrays have 1 to %d dimensions", path, kernel.MaxDims, kernel.MaxDims)
		}
		shape = append(shape, int64(len(vs)))
		if int64(len(vs)) > maxElems/n {
			return kernel.Tensor{}, status.Errorf(codes.ResourceExhausted,
				"gpumesh: %s: more than %d numbers (shape %v...); cuda.CUDAService takes at most %d per array (gpumesh.v1.GPU takes larger ones)",
				path, maxElems, shape, maxElems)
		}
		n *= int64(len(vs))
		next, ok := vs[0].GetKind().(*structpb.Value_ListValue)
		if !ok {
			break
		}
		cur = next.ListValue
	}
	f := filler{path: path, shape: shape, dt: dt, data: make([]byte, n*int64(dt.Size())), at: make([]int64, 0, len(shape))}
	if err := f.fill(lv); err != nil {
		return kernel.Tensor{}, err
	}
	return kernel.Tensor{DType: dt, Shape: shape, Data: f.data}, nil
}

// index formats a position in nested lists as "[i][j]".
func index(at []int64) string {
	var b strings.Builder
	for _, i := range at {
		fmt.Fprintf(&b, "[%d]", i)
	}
	return b.String()
}

// filler writes a tensor's numbers in row-major order.
type filler struct {
	path  string
	shape []int64
	dt    kernel.DType
	data  []byte
	off   int
	at    []int64 // the index of the list being filled
}

func (f *filler) fill(lv *structpb.ListValue) error {
	depth := len(f.at)
	vs := lv.GetValues()
	if want := f.shape[depth]; int64(len(vs)) != want {
		return invalid("%s%s: %d entries, want %d (arrays are rectangular: shape %v)", f.path, index(f.at), len(vs), want, f.shape)
	}
	last := depth == len(f.shape)-1
	for i, v := range vs {
		f.at = append(f.at, int64(i))
		if last {
			num, ok := v.GetKind().(*structpb.Value_NumberValue)
			if !ok {
				return invalid("%s%s: %s; want a number (shape %v)", f.path, index(f.at), kindOf(v), f.shape)
			}
			if err := f.put(num.NumberValue); err != nil {
				return invalid("%s%s: %v", f.path, index(f.at), err)
			}
		} else {
			sub, ok := v.GetKind().(*structpb.Value_ListValue)
			if !ok {
				return invalid("%s%s: %s; want a list (shape %v)", f.path, index(f.at), kindOf(v), f.shape)
			}
			if err := f.fill(sub.ListValue); err != nil {
				return err
			}
		}
		f.at = f.at[:len(f.at)-1]
	}
	return nil
}

// put encodes one number, little-endian.
func (f *filler) put(x float64) error {
	switch f.dt {
	case kernel.Float32:
		binary.LittleEndian.PutUint32(f.data[f.off:], math.Float32bits(float32(x)))
	case kernel.Float16:
		binary.LittleEndian.PutUint16(f.data[f.off:], uint16(float16.Fromfloat32(float32(x))))
	case kernel.BFloat16:
		binary.LittleEndian.PutUint16(f.data[f.off:], bfloat16(float32(x)))
	case kernel.Int32:
		if x != math.Trunc(x) || x < math.MinInt32 || x > math.MaxInt32 {
			return fmt.Errorf("%g is not a whole number within int32 (dtype int32)", x)
		}
		binary.LittleEndian.PutUint32(f.data[f.off:], uint32(int32(x)))
	default:
		return fmt.Errorf("dtype %s is not taken here", f.dt)
	}
	f.off += f.dt.Size()
	return nil
}

// bfloat16 rounds f to the nearest bfloat16 (ties to even), keeping NaN a NaN.
func bfloat16(f float32) uint16 {
	b := math.Float32bits(f)
	if f != f {
		return uint16(b>>16) | 0x40 // quiet NaN, sign kept
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// number decodes element i of a tensor's data.
func number(dt kernel.DType, data []byte, i int) float64 {
	switch dt {
	case kernel.Float32:
		return float64(math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:])))
	case kernel.Float16:
		return float64(float16.Frombits(binary.LittleEndian.Uint16(data[2*i:])).Float32())
	case kernel.BFloat16:
		return float64(math.Float32frombits(uint32(binary.LittleEndian.Uint16(data[2*i:])) << 16))
	case kernel.Int32:
		return float64(int32(binary.LittleEndian.Uint32(data[4*i:])))
	case kernel.Uint8:
		return float64(data[i])
	}
	return math.NaN()
}
