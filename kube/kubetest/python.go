package kubetest

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Python returns a Python 3 that imports grpc and protobuf (Debian's
// python3-grpcio and python3-protobuf), or skips tb saying why there is
// none.
func Python(tb testing.TB) string {
	tb.Helper()
	var tried []string
	for _, p := range []string{"/usr/bin/python3", "python3"} {
		path, err := exec.LookPath(p)
		if err != nil {
			continue
		}
		out, err := exec.Command(path, "-c", "import grpc, google.protobuf").CombinedOutput()
		if err == nil {
			return path
		}
		tried = append(tried, path+": "+strings.TrimSpace(string(out)))
	}
	tb.Skipf("no python3 with the grpc and protobuf modules (apt-get install python3-grpcio python3-protobuf); tried %q", tried)
	return ""
}

// PythonExamples is the directory of the Python client example
// (compute.py and the generated gpumesh_pb2 modules).
func PythonExamples(tb testing.TB) string {
	tb.Helper()
	root, err := moduleRoot()
	if err != nil {
		tb.Fatal(err)
	}
	return filepath.Join(root, "examples", "python")
}
