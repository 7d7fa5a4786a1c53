package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestBinaryLinksNoTesting: the gpumesh binary links no test code. The
// package testing registers its flags and pulls in test machinery, and
// whatever imports it outside a _test.go file is test code: the embedded
// tailnet behind `gpumesh demo` lives in overlay/devnet for that reason,
// and prometheus/common is held below the version whose go-abnf imports
// testing. On failure the test names the packages that import it.
func TestBinaryLinksNoTesting(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go tool on PATH to list the binary's packages: %v", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", "-f", "{{.ImportPath}}:{{join .Imports \" \"}}", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	var importers []string
	for line := range strings.Lines(string(out)) {
		pkg, imports, _ := strings.Cut(strings.TrimSpace(line), ":")
		if pkg == "testing" || slices.Contains(strings.Fields(imports), "testing") {
			importers = append(importers, pkg)
		}
	}
	if len(importers) > 0 {
		t.Errorf("the gpumesh binary links package testing; through %v", importers)
	}
}
