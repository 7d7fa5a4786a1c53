package kubetest

import (
	"path/filepath"
	"testing"

	"github.com/gpumesh/gpumesh/internal/pythontest"
	"github.com/gpumesh/gpumesh/internal/testtools"
)

// Python returns a Python 3 that imports grpc and protobuf (Debian's
// python3-grpcio and python3-protobuf), or skips tb saying why there is
// none.
func Python(tb testing.TB) string {
	tb.Helper()
	return pythontest.Find(tb, "grpc", "google.protobuf")
}

// PythonExamples is the directory of the Python client example
// (compute.py and the generated gpumesh_pb2 modules).
func PythonExamples(tb testing.TB) string {
	tb.Helper()
	return filepath.Join(testtools.Root(tb), "examples", "python")
}
