// Package cuda holds the cuda.CUDAService example: cuda.proto, its
// generated Python stubs (cuda_pb2.py, cuda_pb2_grpc.py), the client of
// remote-GPU posts (snippet.py), and the Go tests that run it. The Go code
// of the service is gpusvc/cudapb, its conversions gpusvc/compat. There is
// no Go API here.
package cuda
