package policy

import (
	"encoding/json"
	"strings"
	"testing"
)

const heldPolicy = `
version = 1
rule "granted" {
  subjects = ["cap:gpumesh.dev/cap/gpu"]
  gpus     = ["*"]
  kernels  = ["*"]
}
rule "ops" {
  subjects = ["cap:example.com/cap/ops"]
  gpus     = ["*"]
  kernels  = ["observe:metrics"]
}
`

// TestExplainAfterRevocation (issue 14 §4): once the tailnet revokes or
// narrows a caller's capability, ExplainDecision says which of the
// policy's capabilities the caller holds now; Evaluate's reason, on the
// call path, stays as it was; and nothing else about the decision changes.
func TestExplainAfterRevocation(t *testing.T) {
	p := mustParse(t, "held.hcl", heldPolicy)
	other := json.RawMessage(`{"secret":"not gpumesh's"}`)
	for _, tt := range []struct {
		name   string
		caps   map[string][]json.RawMessage
		allow  bool
		reason string // in ExplainDecision's reason when denied
	}{
		{"granted", caps(gpuCap, `{"kernels":["matrix_mul"]}`), true, ""},
		{"revoked", nil, false, "alice-ws holds none of the capabilities this policy grants through (example.com/cap/ops, gpumesh.dev/cap/gpu)"},
		{"revoked, other caps held", map[string][]json.RawMessage{"tailscale.com/cap/x": {other}}, false, "holds none of the capabilities"},
		{"narrowed", caps(gpuCap, `{ "kernels": ["relu"] }`, `{"gpus":["1"]}`), false, `alice-ws holds gpumesh.dev/cap/gpu = [{"kernels":["relu"]}, {"gpus":["1"]}]`},
		{"undecodable", caps(gpuCap, `{"kernels":"relu"}`), false, `holds gpumesh.dev/cap/gpu = [{"kernels":"relu"}]`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := Subject{Node: "alice-ws", User: "alice", Caps: tt.caps}
			r := Request{Kernel: "matrix_mul", GPU: "0"}
			d, ed := p.Evaluate(s, r), p.ExplainDecision(s.Prepare(), r)
			if d.Allow != tt.allow || ed.Allow != d.Allow || ed.Rule != d.Rule || ed.Limits != d.Limits || ed.Class != d.Class {
				t.Fatalf("Evaluate %+v, ExplainDecision %+v, want allow %v", d, ed, tt.allow)
			}
			if tt.allow {
				if ed != d {
					t.Errorf("an allowed call's explanation differs: %q vs %q", ed.Reason, d.Reason)
				}
				return
			}
			if !strings.HasPrefix(ed.Reason, d.Reason+"; ") || !strings.Contains(ed.Reason, tt.reason) {
				t.Errorf("ExplainDecision reason %q, want Evaluate's %q and %q", ed.Reason, d.Reason, tt.reason)
			}
			if strings.Contains(ed.Reason, "secret") || strings.Contains(d.Reason, "holds") {
				t.Errorf("reasons say too much: %q / %q", ed.Reason, d.Reason)
			}
			ex := p.Explain(s, r)
			if len(tt.caps[gpuCap]) != len(firstValues(ex.Caps)) {
				t.Errorf("Explain.Caps = %s, want the held %s only", mustJSON(t, ex.Caps), gpuCap)
			}
			if tt.caps[gpuCap] == nil && !strings.Contains(ex.Steps[0].Outcome, "grants through cap:gpumesh.dev/cap/gpu, which alice-ws does not hold now") {
				t.Errorf("step %q does not say the capability is not held", ex.Steps[0].Outcome)
			}
		})
	}
}

// TestExplainDecisionBounded: a tailnet's capability values are repeated
// only so far.
func TestExplainDecisionBounded(t *testing.T) {
	p := mustParse(t, "held.hcl", heldPolicy)
	var vals []string
	for range 100 {
		vals = append(vals, `{"kernels":["relu"],"pad":"`+strings.Repeat("x", 10000)+`"}`)
	}
	d := p.ExplainDecision(Subject{Node: "n", Caps: caps(gpuCap, vals...)}, Request{Kernel: "matrix_mul"})
	if d.Allow || len(d.Reason) > 2000 {
		t.Errorf("allow %v, reason of %d bytes", d.Allow, len(d.Reason))
	}
	// A policy that names no capability explains as Evaluate does.
	q := mustParse(t, "gpus.hcl", gpuPolicy)
	s, r := Subject{Node: "x", Caps: caps(gpuCap)}, Request{Kernel: "relu"}
	if q.ExplainDecision(s, r) != q.Evaluate(s, r) {
		t.Error("ExplainDecision differs from Evaluate for a policy without cap: entries")
	}
	var nilPolicy *Policy
	if d := nilPolicy.ExplainDecision(s, r); d.Allow {
		t.Error("a nil policy allowed")
	}
}

// firstValues flattens the values of held capabilities.
func firstValues(held []HeldCap) []json.RawMessage {
	var out []json.RawMessage
	for _, h := range held {
		out = append(out, h.Values...)
	}
	return out
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
