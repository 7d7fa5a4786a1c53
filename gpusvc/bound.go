package gpusvc

import (
	"fmt"
	"math"
	"strings"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpumesh/gpumesh/gpusvc/kernel"
)

// Bounds on what a client sends, checked before anything is allocated for
// it. Message sizes are bounded by gRPC (Config.MaxRequestBytes) and the
// caller's max_request; these bound what a message's numbers and strings
// would make the host allocate or write.
const (
	// maxNameBytes bounds a kernel, GPU, module or function name. A longer
	// one is InvalidArgument and is never copied whole into a log line,
	// the audit log or an error message.
	maxNameBytes = 128
	// maxErrorBytes bounds an error message in a call record.
	maxErrorBytes = 512
	// maxArgs bounds the arguments of a Compute or a Launch.
	maxArgs = 64
	// maxBuffersPerSession and maxModulesPerSession bound what one
	// session holds; maxSessionsPerCaller the sessions of one identity.
	maxBuffersPerSession = 1024
	maxModulesPerSession = 64
	maxSessionsPerCaller = 64
	// bufferOverhead is counted with each buffer against max_memory and
	// the host's budget: the host's own records of it.
	bufferOverhead = 256
	// maxAllocBytes is beyond any device.
	maxAllocBytes = 1 << 50
)

// bounded returns s cut to at most n bytes (at a rune boundary, marked
// with "…" when cut) with control characters replaced, for records and
// messages.
func bounded(s string, n int) string {
	cut := len(s) > n
	if cut {
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		s = s[:n]
	}
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == utf8.RuneError {
			return '?'
		}
		return r
	}, s)
	if cut {
		s += "…"
	}
	return s
}

// checkName refuses a name longer than maxNameBytes; what is returned is
// safe to record either way.
func checkName(what, s string) (string, error) {
	if len(s) > maxNameBytes {
		return bounded(s, 32), status.Errorf(codes.InvalidArgument, "gpumesh: %s name of %d bytes; at most %d", what, len(s), maxNameBytes)
	}
	return bounded(s, maxNameBytes), nil
}

// shapeBytes is the size of a tensor of shape and dtype, or an error when
// the shape is malformed or its size overflows.
func shapeBytes(shape []int64, dt kernel.DType) (int64, error) {
	if len(shape) == 0 || len(shape) > kernel.MaxDims {
		return 0, fmt.Errorf("shape %v: want 1 to %d dimensions", clipShape(shape), kernel.MaxDims)
	}
	size := int64(dt.Size())
	if size == 0 {
		return 0, fmt.Errorf("unknown dtype %d", dt)
	}
	n := size
	for _, d := range shape {
		if d <= 0 {
			return 0, fmt.Errorf("shape %v: dimensions must be positive", clipShape(shape))
		}
		if n > math.MaxInt64/d {
			return 0, fmt.Errorf("shape %v: too many elements", clipShape(shape))
		}
		n *= d
	}
	return n, nil
}

// clipShape keeps an error message short whatever the shape's rank.
func clipShape(shape []int64) []int64 {
	if len(shape) > kernel.MaxDims+1 {
		return shape[:kernel.MaxDims+1]
	}
	return shape
}

// outputDType is the dtype of a built-in kernel's output.
func outputDType(name string, args []kernel.Arg) kernel.DType {
	switch name {
	case "matrix_mul", "transpose":
		if len(args) > 0 {
			return args[0].Tensor.DType
		}
	}
	return kernel.Float32
}

// checkBufferArgs checks that each buffer argument's shape fits its buffer.
func checkBufferArgs(args []kernel.Arg, sizes []int64) error {
	j := 0
	for i, a := range args {
		if a.Kind != kernel.ArgBuffer {
			continue
		}
		need, err := shapeBytes(a.Tensor.Shape, a.Tensor.DType)
		if err != nil {
			return status.Errorf(codes.InvalidArgument, "gpumesh: argument %d: %v", i, err)
		}
		if need > sizes[j] {
			return status.Errorf(codes.InvalidArgument, "gpumesh: argument %d: shape %v of %s needs %d bytes; its buffer holds %d",
				i, clipShape(a.Tensor.Shape), a.Tensor.DType, need, sizes[j])
		}
		j++
	}
	return nil
}
