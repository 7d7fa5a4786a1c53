// Package kernel defines gpumesh's built-in kernels independently of any
// backend: their names, their arguments, and the shapes they accept and
// produce. Every backend validates a call here first, so a malformed request
// gets the same clear error from the CPU backend and from a CUDA worker.
// MatMul is the one row-slice form of matrix_mul that the Go client and the
// pool both offer, over whichever Compute they have.
//
// kernel imports no overlay, policy or GPU code.
package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"unsafe"

	"github.com/gpumesh/gpumesh/kernelname"
)

// ErrInvalid marks a call whose kernel, arguments or shapes are wrong.
var ErrInvalid = errors.New("invalid call")

// ErrUnknownKernel marks a call to a kernel that does not exist.
var ErrUnknownKernel = errors.New("unknown kernel")

// DType is an element type.
type DType int

const (
	Float32 DType = iota + 1
	Float16
	BFloat16
	Int32
	Uint8
)

// Size is the element size in bytes.
func (d DType) Size() int {
	switch d {
	case Float32, Int32:
		return 4
	case Float16, BFloat16:
		return 2
	case Uint8:
		return 1
	}
	return 0
}

func (d DType) String() string {
	switch d {
	case Float32:
		return "float32"
	case Float16:
		return "float16"
	case BFloat16:
		return "bfloat16"
	case Int32:
		return "int32"
	case Uint8:
		return "uint8"
	}
	return fmt.Sprintf("dtype(%d)", int(d))
}

// Tensor is a dense row-major array. Data is little-endian.
type Tensor struct {
	DType DType
	Shape []int64
	Data  []byte
}

// Elems is the number of elements the shape holds.
func (t Tensor) Elems() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// NewFloat32 returns a float32 tensor of the given shape holding v.
func NewFloat32(shape []int64, v []float32) Tensor {
	b := make([]byte, 4*len(v))
	for i, f := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
	}
	return Tensor{DType: Float32, Shape: slices.Clone(shape), Data: b}
}

// Float32s returns t's data as float32s. On little-endian machines with
// aligned data it aliases t.Data; otherwise it copies.
func (t Tensor) Float32s() []float32 {
	n := len(t.Data) / 4
	if n == 0 {
		return nil
	}
	if littleEndian && uintptr(unsafe.Pointer(&t.Data[0]))%4 == 0 {
		return unsafe.Slice((*float32)(unsafe.Pointer(&t.Data[0])), n)
	}
	out := make([]float32, n)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(t.Data[4*i:]))
	}
	return out
}

// Float32Bytes returns v's bytes, little-endian, aliasing v where it can.
func Float32Bytes(v []float32) []byte {
	if len(v) == 0 {
		return nil
	}
	if littleEndian {
		return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))
	}
	return NewFloat32([]int64{int64(len(v))}, v).Data
}

var littleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

// ArgKind says which field of an Arg is set.
type ArgKind int

const (
	ArgTensor ArgKind = iota + 1
	ArgBuffer
	ArgScalar
	ArgInt
)

// Arg is one kernel argument: an inline tensor, a resident buffer (by the
// backend's handle, with the shape the caller gives it), or a number.
type Arg struct {
	Kind   ArgKind
	Tensor Tensor // for ArgTensor, and for ArgBuffer its dtype and shape
	Buffer uint64 // for ArgBuffer
	Scalar float64
	Int    int64
}

// Spec describes a built-in kernel.
type Spec struct {
	Name string
	// Doc is one line on what it computes.
	Doc string
	// Check validates the arguments and returns the output's shape.
	Check func(args []Arg) (out []int64, err error)
}

// Lookup returns the built-in kernel named name: the kernels every
// backend implements.
func Lookup(name string) (Spec, bool) {
	switch name {
	case kernelname.MatrixMul:
		return Spec{name, "C[m,n] = A[m,k] · B[k,n]", checkMatMul}, true
	case kernelname.Saxpy:
		return Spec{name, "y = a·x + y, for scalar a and vectors x, y", checkSaxpy}, true
	case kernelname.ReduceSum:
		return Spec{name, "sum of all elements of x, shape [1]", checkReduceSum}, true
	case kernelname.Softmax:
		return Spec{name, "softmax over the last axis of x", checkUnary(kernelname.Softmax, 1)}, true
	case kernelname.ReLU:
		return Spec{name, "max(x, 0) element-wise", checkUnary(kernelname.ReLU, 0)}, true
	case kernelname.Transpose:
		return Spec{name, "B[n,m] = A[m,n]ᵀ", checkTranspose}, true
	}
	return Spec{}, false
}

// Names returns the built-in kernel names, sorted.
func Names() []string {
	return kernelname.Builtins()
}

// Check validates a call of the named built-in and returns its output shape.
func Check(name string, args []Arg) ([]int64, error) {
	s, ok := Lookup(name)
	if !ok {
		return nil, fmt.Errorf("%w %q (built-ins: %v)", ErrUnknownKernel, name, Names())
	}
	for i, a := range args {
		if err := checkArg(a); err != nil {
			return nil, fmt.Errorf("%w: %s: argument %d: %v", ErrInvalid, name, i, err)
		}
	}
	out, err := s.Check(args)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalid, name, err)
	}
	return out, nil
}

// MaxDims bounds a tensor's rank.
const MaxDims = 8

func checkArg(a Arg) error {
	switch a.Kind {
	case ArgScalar, ArgInt:
		return nil
	case ArgTensor, ArgBuffer:
	default:
		return fmt.Errorf("argument kind %d not set", a.Kind)
	}
	t := a.Tensor
	if t.DType.Size() == 0 {
		return fmt.Errorf("unknown dtype %d", t.DType)
	}
	if len(t.Shape) == 0 || len(t.Shape) > MaxDims {
		return fmt.Errorf("shape %v: want 1 to %d dimensions", t.Shape, MaxDims)
	}
	n := int64(1)
	for _, d := range t.Shape {
		if d <= 0 {
			return fmt.Errorf("shape %v: dimensions must be positive", t.Shape)
		}
		if n > math.MaxInt64/d/8 {
			return fmt.Errorf("shape %v: too many elements", t.Shape)
		}
		n *= d
	}
	if a.Kind == ArgTensor && int64(len(t.Data)) != n*int64(t.DType.Size()) {
		return fmt.Errorf("shape %v of %s needs %d bytes, got %d", t.Shape, t.DType, n*int64(t.DType.Size()), len(t.Data))
	}
	return nil
}

func tensorArg(args []Arg, i int, what string) (Tensor, error) {
	if i >= len(args) {
		return Tensor{}, fmt.Errorf("missing argument %d (%s)", i, what)
	}
	a := args[i]
	if a.Kind != ArgTensor && a.Kind != ArgBuffer {
		return Tensor{}, fmt.Errorf("argument %d (%s) must be a tensor or buffer", i, what)
	}
	return a.Tensor, nil
}

func wantArgs(args []Arg, n int, sig string) error {
	if len(args) != n {
		return fmt.Errorf("takes %d arguments (%s), got %d", n, sig, len(args))
	}
	return nil
}

func wantFloat(t Tensor, what string) error {
	if t.DType != Float32 {
		return fmt.Errorf("%s is %s; the CPU path computes float32", what, t.DType)
	}
	return nil
}

func checkMatMul(args []Arg) ([]int64, error) {
	if err := wantArgs(args, 2, "A[m,k], B[k,n]"); err != nil {
		return nil, err
	}
	a, err := tensorArg(args, 0, "A")
	if err != nil {
		return nil, err
	}
	b, err := tensorArg(args, 1, "B")
	if err != nil {
		return nil, err
	}
	if len(a.Shape) != 2 || len(b.Shape) != 2 {
		return nil, fmt.Errorf("A and B must be 2-D, got %v and %v", a.Shape, b.Shape)
	}
	if a.Shape[1] != b.Shape[0] {
		return nil, fmt.Errorf("inner dimensions differ: A %v, B %v", a.Shape, b.Shape)
	}
	if a.DType != b.DType {
		return nil, fmt.Errorf("A is %s, B is %s", a.DType, b.DType)
	}
	if a.DType != Float32 && a.DType != Float16 && a.DType != BFloat16 {
		return nil, fmt.Errorf("dtype %s: matrix_mul takes float32, float16 or bfloat16", a.DType)
	}
	return []int64{a.Shape[0], b.Shape[1]}, nil
}

func checkSaxpy(args []Arg) ([]int64, error) {
	if err := wantArgs(args, 3, "a scalar, x[n], y[n]"); err != nil {
		return nil, err
	}
	if args[0].Kind != ArgScalar && args[0].Kind != ArgInt {
		return nil, errors.New("argument 0 (a) must be a scalar")
	}
	x, err := tensorArg(args, 1, "x")
	if err != nil {
		return nil, err
	}
	y, err := tensorArg(args, 2, "y")
	if err != nil {
		return nil, err
	}
	if err := wantFloat(x, "x"); err != nil {
		return nil, err
	}
	if err := wantFloat(y, "y"); err != nil {
		return nil, err
	}
	if x.Elems() != y.Elems() {
		return nil, fmt.Errorf("x has %d elements, y has %d", x.Elems(), y.Elems())
	}
	return slices.Clone(y.Shape), nil
}

func checkReduceSum(args []Arg) ([]int64, error) {
	if err := wantArgs(args, 1, "x"); err != nil {
		return nil, err
	}
	x, err := tensorArg(args, 0, "x")
	if err != nil {
		return nil, err
	}
	if err := wantFloat(x, "x"); err != nil {
		return nil, err
	}
	return []int64{1}, nil
}

func checkUnary(name string, minDims int) func([]Arg) ([]int64, error) {
	return func(args []Arg) ([]int64, error) {
		if err := wantArgs(args, 1, "x"); err != nil {
			return nil, err
		}
		x, err := tensorArg(args, 0, "x")
		if err != nil {
			return nil, err
		}
		if err := wantFloat(x, "x"); err != nil {
			return nil, err
		}
		if len(x.Shape) < minDims {
			return nil, fmt.Errorf("%s needs at least %d dimension(s)", name, minDims)
		}
		return slices.Clone(x.Shape), nil
	}
}

func checkTranspose(args []Arg) ([]int64, error) {
	if err := wantArgs(args, 1, "A[m,n]"); err != nil {
		return nil, err
	}
	a, err := tensorArg(args, 0, "A")
	if err != nil {
		return nil, err
	}
	if len(a.Shape) != 2 {
		return nil, fmt.Errorf("A must be 2-D, got %v", a.Shape)
	}
	if a.DType.Size() != 4 {
		return nil, fmt.Errorf("dtype %s: transpose takes 4-byte elements", a.DType)
	}
	return []int64{a.Shape[1], a.Shape[0]}, nil
}
