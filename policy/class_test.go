package policy_test

import (
	"slices"
	"testing"

	"github.com/gpumesh/gpumesh/dscp"
	"github.com/gpumesh/gpumesh/policy"
)

// TestClassOf: a caller's class is its allow rule's, whatever kernel that
// rule names; a caller no rule allows, or whose rule names no class, is in
// the default class, marked AF41 unless the policy declares it.
func TestClassOf(t *testing.T) {
	const src = `
version = 1
class "interactive" {
  dscp     = "EF"
  priority = 0
}
class "bulk" {
  dscp     = "AF11"
  priority = 3
}
rule "laptop" {
  subjects = ["laptop"]
  kernels  = ["saxpy"]
  gpus     = ["*"]
  class    = "interactive"
}
rule "trainer" {
  subjects = ["trainer"]
  kernels  = ["*"]
  gpus     = ["*"]
  class    = "bulk"
}
rule "plain" {
  subjects = ["plain"]
  kernels  = ["relu"]
  gpus     = ["*"]
}
`
	p, err := policy.Parse("p.hcl", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		node  string
		class string
		code  dscp.Code
	}{
		{"laptop", "interactive", dscp.EF},
		{"trainer", "bulk", dscp.AF11},
		{"plain", policy.DefaultClass, dscp.AF41},
		{"stranger", policy.DefaultClass, dscp.AF41},
	} {
		class, code := p.ClassOf(policy.Subject{Node: tt.node})
		if class != tt.class || code != tt.code {
			t.Errorf("ClassOf(%s) = %s %v; want %s %v", tt.node, class, code, tt.class, tt.code)
		}
	}
	var names []string
	for _, c := range p.ScheduledClasses() {
		names = append(names, c.Name)
		if c.Name == policy.DefaultClass && (c.Priority != 4 || c.DSCP != dscp.AF41) {
			t.Errorf("added default class %+v; want AF41 below bulk (priority 4)", c)
		}
	}
	if want := []string{"interactive", "bulk", policy.DefaultClass}; !slices.Equal(names, want) {
		t.Errorf("ScheduledClasses = %v; want %v", names, want)
	}

	// A policy that declares the default class keeps its own.
	p, err = policy.Parse("d.hcl", []byte("version = 1\nclass \"default\" {\n  dscp = \"CS1\"\n  priority = 5\n}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cs := p.ScheduledClasses(); len(cs) != 1 || cs[0].DSCP != dscp.CS1 {
		t.Errorf("ScheduledClasses = %+v; want the declared default only", cs)
	}
	if class, code := p.ClassOf(policy.Subject{Node: "anyone"}); class != policy.DefaultClass || code != dscp.CS1 {
		t.Errorf("ClassOf under a declared default = %s %v; want default CS1", class, code)
	}
	var nilPolicy *policy.Policy
	if class, _ := nilPolicy.ClassOf(policy.Subject{Node: "x"}); class != policy.DefaultClass {
		t.Errorf("nil policy: class %q", class)
	}
}
