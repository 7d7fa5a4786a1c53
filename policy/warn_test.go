package policy

import (
	"strings"
	"testing"
)

// TestWarnNodeNames (finding 11): a rule that grants custom code, resident
// buffers or observe:metrics through a node name is warned about, at the
// entry's position; tags, users, capabilities, wg: peers and denies are not.
func TestWarnNodeNames(t *testing.T) {
	p := mustParse(t, "warn.hcl", `version = 1
group "mixed" { members = ["desk", "tag:ml"] }
group "strong" { members = ["tag:ml", "alice@example.com"] }
rule "custom" {
  subjects = ["laptop", "tag:ci"]
  gpus     = ["*"]
  kernels  = ["custom:ptx"]
}
rule "metrics" {
  subjects = ["node:scraper"]
  gpus     = ["*"]
  kernels  = ["observe:metrics"]
}
rule "builtins" {
  subjects = ["group:mixed"]
  gpus     = ["0"]
  kernels  = ["*"]
}
rule "strong" {
  subjects = ["tag:ci", "alice@", "user:bob", "cap:gpumesh.dev/cap/gpu", "wg:ws", "group:strong", "*"]
  gpus     = ["*"]
  kernels  = ["*", "custom:ptx", "custom:cuda", "observe:metrics"]
}
deny "lost" { subjects = ["old-laptop"] }
`)
	ws := p.Warnings()
	want := []struct {
		pos  string
		has  []string
		hasn []string
	}{
		{"warn.hcl:5:15", []string{`"custom"`, "custom:ptx, resident buffers", "to laptop "}, []string{"tag:ci", "observe"}},
		{"warn.hcl:10:15", []string{`"metrics"`, "observe:metrics to node:scraper"}, []string{"buffers"}},
		{"warn.hcl:15:15", []string{`"builtins"`, "resident buffers to desk (in group:mixed)"}, []string{"tag:ml", "custom"}},
	}
	if len(ws) != len(want) {
		for _, w := range ws {
			t.Logf("%s: %s", Pos(*w.Subject), w.Detail)
		}
		t.Fatalf("%d warnings, want %d", len(ws), len(want))
	}
	for i, w := range want {
		got := ws[i]
		if Pos(*got.Subject) != w.pos || got.Summary != "Rights granted by node name" {
			t.Errorf("warning %d at %s (%s), want %s", i, Pos(*got.Subject), got.Summary, w.pos)
		}
		for _, s := range w.has {
			if !strings.Contains(got.Detail, s) {
				t.Errorf("warning %d %q lacks %q", i, got.Detail, s)
			}
		}
		for _, s := range w.hasn {
			if strings.Contains(got.Detail, s) {
				t.Errorf("warning %d %q mentions %q", i, got.Detail, s)
			}
		}
	}
	if ws := mustParse(t, "ok.hcl", gpuPolicy).Warnings(); len(ws) != 3 {
		t.Errorf("gpu policy: %d warnings, want 3 (laptop, desk, lab)", len(ws))
	}
	var nilPolicy *Policy
	if nilPolicy.Warnings() != nil {
		t.Error("a nil policy has warnings")
	}
}
