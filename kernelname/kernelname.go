// Package kernelname names gpumesh's built-in kernels: the one list that
// the policy (which kernels a rule may grant) and gpusvc/kernel (which
// kernels every backend implements) both read, so that the two cannot
// drift apart.
//
// kernelname is a leaf: it imports nothing, so policy can share the names
// without importing any GPU code, and gpusvc/kernel without importing
// policy.
package kernelname

// The built-in kernels, by the name a caller and a policy use.
const (
	MatrixMul = "matrix_mul"
	ReduceSum = "reduce_sum"
	ReLU      = "relu"
	Saxpy     = "saxpy"
	Softmax   = "softmax"
	Transpose = "transpose"
)

// Builtins returns the built-in kernel names, sorted, in a new slice.
func Builtins() []string {
	return []string{MatrixMul, ReduceSum, ReLU, Saxpy, Softmax, Transpose}
}

// IsBuiltin reports whether name is a built-in kernel.
func IsBuiltin(name string) bool {
	switch name {
	case MatrixMul, ReduceSum, ReLU, Saxpy, Softmax, Transpose:
		return true
	}
	return false
}
