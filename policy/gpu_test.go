package policy

import (
	"strings"
	"testing"
)

const (
	uuid0 = "GPU-8f6c0a1b-1111-2222-3333-444455556666" // GPU 0, as NVML prints it
	uuid1 = "GPU-9e7d0a1b-1111-2222-3333-444455556666" // GPU 1
)

// gpuPolicy denies the laptop GPU 0 by index and the desk GPU 0 by UUID;
// both are allowed every GPU otherwise. The lab may use GPU 0 only, named
// by UUID.
const gpuPolicy = `
version = 1
rule "laptop" {
  subjects = ["laptop", "desk"]
  gpus     = ["*"]
  kernels  = ["*"]
}
rule "lab" {
  subjects = ["lab"]
  gpus     = ["` + uuid0 + `"]
  kernels  = ["*"]
}
deny "laptop-not-gpu0" {
  subjects = ["laptop"]
  gpus     = ["0"]
}
deny "desk-not-gpu0" {
  subjects = ["desk"]
  gpus     = ["` + uuid0 + `"]
}
`

// TestRequestGPUCanonical attacks finding 2: a deny on GPU 0 is not
// bypassed by naming GPU 0 another way, a rule written with a UUID and one
// written with an index mean the same device when the server passes both,
// and a GPU in no canonical form matches no rule, not even "*".
func TestRequestGPUCanonical(t *testing.T) {
	p := mustParse(t, "gpus.hcl", gpuPolicy)
	upper := strings.ToUpper(uuid0)
	lowerU := strings.ToLower(uuid0)
	tests := []struct {
		name      string
		node      string
		gpu, uuid string
		allow     bool
		rule      string // the deciding rule; "" for default deny
	}{
		// The deny by index holds however the request is spelled.
		{"index", "laptop", "0", "", false, "laptop-not-gpu0"},
		{"default gpu", "laptop", "", "", false, "laptop-not-gpu0"},
		{"index with uuid", "laptop", "0", uuid0, false, "laptop-not-gpu0"},
		{"other gpu", "laptop", "1", uuid1, true, "laptop"},
		{"leading zero", "laptop", "00", "", false, ""},
		{"leading zeros on 1", "laptop", "01", "", false, ""},
		{"plus sign", "laptop", "+0", "", false, ""},
		{"minus zero", "laptop", "-0", "", false, ""},
		{"leading space", "laptop", " 0", "", false, ""},
		{"trailing space", "laptop", "0 ", "", false, ""},
		{"newline", "laptop", "0\n", "", false, ""},
		{"hex", "laptop", "0x0", "", false, ""},
		{"float", "laptop", "0.0", "", false, ""},
		{"exponent", "laptop", "1e0", "", false, ""},
		{"arabic-indic zero", "laptop", "٠", "", false, ""},
		{"fullwidth zero", "laptop", "０", "", false, ""},
		{"nul", "laptop", "\x000", "", false, ""},
		{"star", "laptop", "*", "", false, ""},
		{"too big", "laptop", "65536", "", false, ""},
		{"huge", "laptop", strings.Repeat("9", 1000), "", false, ""},
		{"bad uuid", "laptop", "GPU-zz", "", false, ""},
		{"bare prefix", "laptop", "GPU-", "", false, ""},
		{"uuid with space", "laptop", uuid1 + " ", "", false, ""},
		{"index with bad uuid", "laptop", "1", "GPU-zz", false, ""},
		{"index with uuid padded", "laptop", "1", " " + uuid1, false, ""},
		// The deny by UUID holds whether the server passes the index and
		// the UUID, or the UUID alone, in any case.
		{"uuid deny, index and uuid", "desk", "0", uuid0, false, "desk-not-gpu0"},
		{"uuid deny, upper uuid", "desk", "0", upper, false, "desk-not-gpu0"},
		{"uuid deny, uuid as gpu", "desk", uuid0, "", false, "desk-not-gpu0"},
		{"uuid deny, lower uuid as gpu", "desk", lowerU, "", false, "desk-not-gpu0"},
		{"uuid deny, other gpu", "desk", "1", uuid1, true, "laptop"},
		{"uuid deny, padded index", "desk", "00", uuid0, false, ""},
		{"contradicting uuids", "desk", uuid1, uuid0, false, ""},
		// An allow by UUID matches the index when the server passes both.
		{"uuid allow by index", "lab", "0", uuid0, true, "lab"},
		{"uuid allow by uuid", "lab", upper, "", true, "lab"},
		{"uuid allow, index alone", "lab", "0", "", false, ""},
		{"uuid allow, other gpu", "lab", "1", uuid1, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, k := range []string{"relu", KernelCustomPTX} {
				r := Request{Kernel: k, GPU: tt.gpu, GPUUUID: tt.uuid}
				d := p.Evaluate(Subject{Node: tt.node}, r)
				want := tt.allow && k == "relu"
				if d.Allow != want || d.Allow && d.Rule != tt.rule || !tt.allow && d.Rule != tt.rule {
					t.Errorf("%s %+v: allow %v rule %q (%s); want allow %v rule %q", tt.node, r, d.Allow, d.Rule, d.Reason, want, tt.rule)
				}
				if len(d.Reason) > 400 {
					t.Errorf("reason of %d bytes echoes the request: %.80q…", len(d.Reason), d.Reason)
				}
				if ex := p.Explain(Subject{Node: tt.node}, r); ex.Decision != d {
					t.Errorf("Explain decided %+v, Evaluate %+v", ex.Decision, d)
				}
			}
			if d := p.EvaluateAny(Subject{Node: tt.node}, Request{GPU: tt.gpu, GPUUUID: tt.uuid}, residentRights()); d.Allow != tt.allow {
				t.Errorf("resident buffers: allow %v (%s), want %v", d.Allow, d.Reason, tt.allow)
			}
		})
	}
}

// TestPolicyGPUsCanonical: a policy file names each GPU one way. An index
// written with a sign, spaces or leading zeros is refused with the
// canonical spelling; UUIDs are accepted in any case and compared in lower
// case.
func TestPolicyGPUsCanonical(t *testing.T) {
	for _, tt := range []struct {
		gpu     string
		wantErr string // "" when accepted
	}{
		{`"0"`, ""},
		{`"12"`, ""},
		{`0`, ""}, // an HCL number is its digits
		{`"*"`, ""},
		{`"` + uuid0 + `"`, ""},
		{`"` + strings.ToUpper(uuid0) + `"`, ""},
		{`"MIG-8f6c0a1b-1111-2222-3333-444455556666"`, ""},
		{`"00"`, `write the index as "0"`},
		{`"007"`, `write the index as "7"`},
		{`"+1"`, `write the index as "1"`},
		{`" 0"`, `write the index as "0"`},
		{`"0 "`, `write the index as "0"`},
		{`"-0"`, "want an index"},
		{`"-1"`, "want an index"},
		{`"0x1"`, "want an index"},
		{`"1.0"`, "want an index"},
		{`"65536"`, "want an index"},
		{`"GPU-"`, "want an index"},
		{`"GPU-xyz"`, "want an index"},
		{`"gpu0"`, "want an index"},
		{`""`, "want an index"},
	} {
		src := "version = 1\nrule \"r\" {\n  subjects = [\"laptop\"]\n  gpus = [" + tt.gpu + "]\n  kernels = [\"relu\"]\n}\n"
		_, err := Parse("gpus.hcl", []byte(src))
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("gpus = [%s]: %v", tt.gpu, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("gpus = [%s]: error %v, want one containing %q", tt.gpu, err, tt.wantErr)
		}
	}
}

// TestSummaryGPUsCanonical: what a policy compiles to names GPUs in their
// canonical form.
func TestSummaryGPUsCanonical(t *testing.T) {
	p := mustParse(t, "gpus.hcl", gpuPolicy)
	for _, r := range append(p.Summary().Rules, p.Summary().Denies...) {
		for _, g := range r.GPUs {
			if g != "*" && !isIndex(g) && !(isUUID(g) && g == strings.ToLower(g)) {
				t.Errorf("rule %s: gpu %q is not canonical", r.Name, g)
			}
		}
	}
}
