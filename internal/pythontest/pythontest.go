// Package pythontest runs gpumesh's Python code from Go tests with a real
// Python: it finds a python3 that imports what the code needs (Debian's
// /usr/bin/python3 with python3-grpcio, python3-protobuf and python3-numpy,
// when the python3 on PATH is another installation), and installs the
// gpumesh package (python/) into a fresh virtual environment, offline. A
// test skips, saying which Debian packages to install, only when no such
// python3 exists.
//
// pythontest imports no gpumesh package.
package pythontest

import (
	"context"
	"encoding/hex"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/gpumesh/gpumesh/internal/testtools"
)

// debianPackage names the Debian package of a module a test may need.
func debianPackage(mod string) string {
	switch mod {
	case "grpc":
		return "python3-grpcio"
	case "google.protobuf":
		return "python3-protobuf"
	}
	return "python3-" + strings.ReplaceAll(mod, ".", "-")
}

// Find returns a python3 (the one on PATH, or /usr/bin/python3) that can
// import every module of mods; the test skips when there is none.
func Find(tb testing.TB, mods ...string) string {
	tb.Helper()
	var tried []string
	for _, p := range []string{"python3", "/usr/bin/python3"} {
		path, err := exec.LookPath(p)
		if err != nil {
			continue
		}
		out, err := exec.Command(path, "-c", "import "+strings.Join(mods, ", ")).CombinedOutput()
		if err == nil {
			return path
		}
		tried = append(tried, path+": "+lastLine(string(out)))
	}
	var pkgs []string
	for _, m := range mods {
		pkgs = append(pkgs, debianPackage(m))
	}
	tb.Skipf("no python3 that imports %s (apt-get install %s); tried %q",
		strings.Join(mods, ", "), strings.Join(pkgs, " "), tried)
	return ""
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// Venv creates a virtual environment in a temporary directory that sees
// py's system packages (grpcio, protobuf, numpy), installs the gpumesh
// package into it from a copy of python/ with pip, offline
// (--no-index --no-build-isolation), and returns the environment's python.
// It needs python3-venv, python3-setuptools and python3-wheel.
func Venv(ctx context.Context, tb testing.TB, py string) string {
	tb.Helper()
	dir := tb.TempDir()
	src := filepath.Join(dir, "src")
	if err := copyPackage(filepath.Join(testtools.Root(tb), "python"), src); err != nil {
		tb.Fatal(err)
	}
	venv := filepath.Join(dir, "venv")
	run(ctx, tb, py, "-m", "venv", "--system-site-packages", venv)
	vpy := filepath.Join(venv, "bin", "python")
	run(ctx, tb, vpy, "-m", "pip", "install", "--quiet", "--no-index", "--no-build-isolation",
		"--disable-pip-version-check", "--no-cache-dir", src)
	return vpy
}

func run(ctx context.Context, tb testing.TB, name string, args ...string) {
	tb.Helper()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1", "PIP_NO_INPUT=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("%s %s: %v\n%s\n(the gpumesh package installs offline with python3-venv, python3-setuptools and python3-wheel)",
			name, strings.Join(args, " "), err, out)
	}
}

// copyPackage copies the package's sources, leaving out build leftovers
// (pip builds in the source tree) and the tests.
func copyPackage(from, to string) error {
	return filepath.WalkDir(from, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(from, path)
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch name := d.Name(); {
			case name == "__pycache__" || name == "build" || name == "tests" || strings.HasSuffix(name, ".egg-info"):
				return filepath.SkipDir
			}
			return os.MkdirAll(filepath.Join(to, rel), 0o755)
		}
		if !d.Type().IsRegular() || strings.HasSuffix(path, ".go") {
			return nil
		}
		return copyFile(path, filepath.Join(to, rel))
	})
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// CheckStubs fails the test when the generated Python module (a
// gpumesh_pb2-style module, imported from dir) was not generated from the
// same .proto as want, the Go package's descriptor: the stubs are stale,
// `make python-stubs` regenerates them.
func CheckStubs(ctx context.Context, tb testing.TB, py, dir, module string, want protoreflect.FileDescriptor) {
	tb.Helper()
	cmd := exec.CommandContext(ctx, py, "-c",
		"import sys, importlib; sys.path.insert(0, sys.argv[1]); "+
			"sys.stdout.write(importlib.import_module(sys.argv[2]).DESCRIPTOR.serialized_pb.hex())", dir, module)
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.Output()
	if err != nil {
		tb.Fatalf("import %s from %s: %v", module, dir, err)
	}
	raw, err := hex.DecodeString(string(out))
	if err != nil {
		tb.Fatal(err)
	}
	var got descriptorpb.FileDescriptorProto
	if err := proto.Unmarshal(raw, &got); err != nil {
		tb.Fatalf("%s's descriptor: %v", module, err)
	}
	w := protodesc.ToFileDescriptorProto(want)
	// protoc's Python output leaves out source info and JSON names.
	for _, fd := range []*descriptorpb.FileDescriptorProto{&got, w} {
		fd.SourceCodeInfo = nil
		clearJSONNames(fd.GetMessageType())
	}
	if !proto.Equal(&got, w) {
		tb.Errorf("%s/%s.py is stale: it was not generated from %s as the Go package was; run `make python-stubs`",
			dir, module, want.Path())
	}
}

func clearJSONNames(msgs []*descriptorpb.DescriptorProto) {
	for _, m := range msgs {
		for _, f := range m.GetField() {
			f.JsonName = nil
		}
		clearJSONNames(m.GetNestedType())
	}
}
