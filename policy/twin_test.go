package policy

import (
	"encoding/json"
	"reflect"
	"testing"
)

// TestTwinsCompileEqual proves that the HCL and JSON forms of the example
// policy mean the same thing: equal compiled summaries (which leave out only
// source positions and the file name), equal decisions on a grid of
// requests, and both pass their tests.
func TestTwinsCompileEqual(t *testing.T) {
	h, err := LoadChecked("../examples/policies/team.hcl")
	if err != nil {
		t.Fatal(err)
	}
	j, err := LoadChecked("../examples/policies/team.json")
	if err != nil {
		t.Fatal(err)
	}
	hs, js := h.Summary(), j.Summary()
	if !reflect.DeepEqual(hs, js) {
		hb, _ := json.MarshalIndent(hs, "", " ")
		jb, _ := json.MarshalIndent(js, "", " ")
		t.Fatalf("summaries differ:\nHCL:  %s\nJSON: %s", hb, jb)
	}
	if len(hs.Rules) == 0 || len(hs.Tests) == 0 || len(hs.Denies) == 0 || len(hs.Classes) == 0 {
		t.Fatalf("summary is missing parts: %+v", hs)
	}
	if !reflect.DeepEqual(h.Classes(), j.Classes()) {
		t.Errorf("classes differ: %+v vs %+v", h.Classes(), j.Classes())
	}
	for _, s := range gridSubjects() {
		for _, r := range gridRequests() {
			if dh, dj := h.Evaluate(s, r), j.Evaluate(s, r); dh != dj {
				t.Errorf("%v %+v: HCL %+v, JSON %+v", s, r, dh, dj)
			}
		}
	}
}

// TestSummaryDistinguishes guards TestTwinsCompileEqual against a summary
// too coarse to see a difference.
func TestSummaryDistinguishes(t *testing.T) {
	base := `version = 1
class "c" { dscp = "EF" }
rule "r" {
  subjects = ["laptop"]
  gpus     = ["0"]
  kernels  = ["relu"]
`
	ref := mustParse(t, "a.hcl", base+"}\n").Summary()
	for _, change := range []string{
		"max_memory = 1\n", "max_concurrent = 1\n", "rate = 1\n", "max_request = 1\n",
		"idle_timeout = \"1s\"\n", "class = \"c\"\n",
	} {
		if got := mustParse(t, "b.hcl", base+change+"}\n").Summary(); reflect.DeepEqual(got, ref) {
			t.Errorf("summary does not show %q", change)
		}
	}
}

func gridSubjects() []Subject {
	capv := map[string][]json.RawMessage{"gpumesh.dev/cap/gpu": {json.RawMessage(`{"kernels":["relu"],"gpus":["0"]}`)}}
	return []Subject{
		{Node: "laptop"}, {Node: "laptop", User: "bob@example.com"}, {Node: "alices-desktop", User: "alice@example.com"},
		{Node: "runner-7", Tags: []string{"tag:ci"}}, {Node: "inference-1", Tags: []string{"tag:prod"}},
		{Node: "contractor", User: "carol@example.com", Caps: capv}, {Node: "workstation", WireGuard: true},
		{Node: "workstation"}, {Node: "old-laptop", User: "bob@example.com"}, {Node: "stranger"}, {},
		{Node: "k8s-node-1", Tags: []string{"tag:k8s"}, Pod: &Pod{Namespace: "ml", ServiceAccount: "trainer", Name: "t-0"}},
		{Node: "k8s-node-1", Tags: []string{"tag:k8s"}, Pod: &Pod{Namespace: "ml", ServiceAccount: "notebook"}},
	}
}

func gridRequests() []Request {
	var out []Request
	for _, k := range append(BuiltinKernels(), KernelCustomPTX, KernelCustomCUDA, "nope") {
		for _, g := range []string{"", "0", "1", "2"} {
			out = append(out, Request{Kernel: k, GPU: g})
		}
	}
	return out
}
