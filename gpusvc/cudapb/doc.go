// Package cudapb is the generated Go code of examples/cuda/cuda.proto:
// cuda.CUDAService, the compatibility door for clients written the way
// remote-GPU posts show them. gpusvc/compat converts its calls to gpumesh
// kernel calls. Regenerate with `make proto-cuda`.
package cudapb
