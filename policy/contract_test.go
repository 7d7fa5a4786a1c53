package policy

import (
	"encoding/json"
	"testing"
)

const contractPolicy = `
version = 1
rule "team" {
  subjects = ["laptop", "tag:ci", "cap:gpumesh.dev/cap/gpu"]
  gpus     = ["*"]
  kernels  = ["*"]
}
rule "observers" {
  subjects = ["tag:prometheus"]
  gpus     = ["*"]
  kernels  = ["observe:metrics"]
}
deny "lost" {
  subjects = ["lost-laptop"]
}
rule "lost-too" {
  subjects = ["lost-laptop"]
  gpus     = ["0"]
  kernels  = ["relu"]
}
`

func TestRightMetricsGrantedOnlyByName(t *testing.T) {
	p, err := Parse("contract.hcl", []byte(contractPolicy))
	if err != nil {
		t.Fatal(err)
	}
	if d := p.Evaluate(Subject{Node: "laptop"}, Request{Kernel: RightMetrics}); d.Allow {
		t.Errorf(`kernels = ["*"] granted %s: %s`, RightMetrics, d.Reason)
	}
	if d := p.Evaluate(Subject{Node: "scraper", Tags: []string{"tag:prometheus"}}, Request{Kernel: RightMetrics}); !d.Allow {
		t.Errorf("a rule naming %s did not grant it: %s", RightMetrics, d.Reason)
	}
	if d := p.Evaluate(Subject{Node: "scraper", Tags: []string{"tag:prometheus"}}, Request{Kernel: "matrix_mul"}); d.Allow {
		t.Errorf("observe:metrics granted a kernel: %s", d.Reason)
	}
}

func TestAdmits(t *testing.T) {
	p, err := Parse("contract.hcl", []byte(contractPolicy))
	if err != nil {
		t.Fatal(err)
	}
	gpuCap := func(v string) map[string][]json.RawMessage {
		return map[string][]json.RawMessage{"gpumesh.dev/cap/gpu": {json.RawMessage(v)}}
	}
	for _, tt := range []struct {
		name string
		s    Subject
		want bool
		rule string
	}{
		{"named node", Subject{Node: "laptop"}, true, "team"},
		{"tag", Subject{Node: "runner", Tags: []string{"tag:ci"}}, true, "team"},
		{"observer only", Subject{Node: "scraper", Tags: []string{"tag:prometheus"}}, true, "observers"},
		{"stranger", Subject{Node: "stranger"}, false, ""},
		{"no identity", Subject{}, false, ""},
		{"deny everything wins", Subject{Node: "lost-laptop"}, false, "lost"},
		{"capability", Subject{Node: "x", Caps: gpuCap(`{"kernels":["relu"]}`)}, true, "team"},
		{"undecodable capability", Subject{Node: "x", Caps: gpuCap(`{"bogus":1}`)}, false, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, s := range []Subject{tt.s, tt.s.Prepare()} {
				d := p.Admits(s)
				if d.Allow != tt.want || d.Rule != tt.rule {
					t.Errorf("Admits(%v) = allow %v rule %q (%s), want allow %v rule %q", s, d.Allow, d.Rule, d.Reason, tt.want, tt.rule)
				}
			}
		})
	}
	var nilPolicy *Policy
	if nilPolicy.Admits(Subject{Node: "laptop"}).Allow {
		t.Error("a nil policy admitted a caller")
	}
}

// TestPrepareSameDecisions: a prepared subject decides exactly as the raw one.
func TestPrepareSameDecisions(t *testing.T) {
	p, err := Parse("contract.hcl", []byte(contractPolicy))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{`{}`, `{"kernels":["relu"]}`, `{"gpus":["1"]}`, `{"kernels":["*"],"gpus":["0"]}`, `[1]`, `{"x":1}`, ``} {
		var vals []json.RawMessage
		if v != "" {
			vals = []json.RawMessage{json.RawMessage(v)}
		}
		s := Subject{Node: "someone", Caps: map[string][]json.RawMessage{"gpumesh.dev/cap/gpu": vals}}
		ps := s.Prepare()
		for _, k := range append(BuiltinKernels(), KernelCustomPTX, RightMetrics) {
			for _, g := range []string{"0", "1"} {
				r := Request{Kernel: k, GPU: g}
				if a, b := p.Evaluate(s, r), p.Evaluate(ps, r); a != b {
					t.Errorf("cap %s, %v: raw %+v, prepared %+v", v, r, a, b)
				}
			}
		}
	}
}
