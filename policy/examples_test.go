package policy_test

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/gpumesh/gpumesh/dscp"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/policy"
)

// TestExamples loads every example policy the way a server does.
func TestExamples(t *testing.T) {
	files, _ := filepath.Glob("../examples/policies/*")
	files = append(files, "../examples/policy.hcl")
	if len(files) < 3 {
		t.Fatalf("found only %v", files)
	}
	for _, f := range files {
		p, err := policy.LoadChecked(f)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		for _, r := range p.RunTests() {
			if !r.Pass {
				t.Errorf("%s: %s: %s", f, r.Name, r.Message)
			}
		}
	}
}

// TestDemoPolicy pins the demo's promises: laptop runs every built-in on
// every GPU in class interactive, stranger is refused, nobody runs custom code.
func TestDemoPolicy(t *testing.T) {
	p, err := policy.LoadChecked("../examples/policy.hcl")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range policy.BuiltinKernels() {
		for _, g := range []string{"", "0", "1", "GPU-1234abcd"} {
			d := p.Evaluate(policy.Subject{Node: "laptop"}, policy.Request{Kernel: k, GPU: g})
			if !d.Allow || d.Class != "interactive" {
				t.Errorf("laptop %s gpu %q: %+v", k, g, d)
			}
			if d := p.Evaluate(policy.Subject{Node: "stranger"}, policy.Request{Kernel: k, GPU: g}); d.Allow {
				t.Errorf("stranger allowed: %+v", d)
			}
		}
	}
	for _, k := range []string{policy.KernelCustomPTX, policy.KernelCustomCUDA} {
		if d := p.Evaluate(policy.Subject{Node: "laptop"}, policy.Request{Kernel: k}); d.Allow {
			t.Errorf("laptop allowed %s", k)
		}
	}
	cl, ok := p.Class("interactive")
	if !ok || cl.DSCP != dscp.EF {
		t.Errorf("class interactive: %+v", cl)
	}
}

// TestBuiltinKernelsMatchGPUService keeps the names a policy accepts in step
// with the kernels the server implements. (policy itself does not import
// gpusvc; only this test does.)
func TestBuiltinKernelsMatchGPUService(t *testing.T) {
	if got, want := policy.BuiltinKernels(), kernel.Names(); !slices.Equal(got, want) {
		t.Errorf("policy knows built-ins %v, gpusvc/kernel has %v", got, want)
	}
}
