package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"
)

// FuzzParse feeds arbitrary bytes to both syntaxes. A parse either fails
// with positioned diagnostics or yields a policy whose evaluation is total,
// deterministic and consistent with Explain. Seeds: the examples, and the
// corpus in testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	for _, path := range []string{"../examples/policy.hcl", "../examples/policies/team.hcl", "../examples/policies/team.json"} {
		src, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(src, path[len(path)-5:] == ".json")
	}
	f.Add([]byte(overlapPolicy), false)
	f.Fuzz(func(t *testing.T, src []byte, asJSON bool) {
		name := "fuzz.hcl"
		if asJSON {
			name = "fuzz.json"
		}
		// A hang guard, not a timing assertion: an input that takes this
		// long is a bug, and panicking here makes the fuzzer keep it.
		watchdog := time.AfterFunc(20*time.Second, func() { panic(fmt.Sprintf("WATCHDOG slow input: %q", src)) })
		defer watchdog.Stop()
		p, err := Parse(name, src)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %T is not a *ParseError: %v", err, err)
			}
			if len(pe.Diags) == 0 {
				t.Fatal("ParseError without diagnostics")
			}
			for _, d := range pe.Diags {
				if d.Subject == nil || d.Subject.Filename != name || d.Subject.Start.Line < 1 {
					t.Fatalf("diagnostic without a position: %s", formatDiag(d))
				}
			}
			return
		}
		if p.Version() != LanguageVersion {
			t.Fatalf("version %d", p.Version())
		}
		if _, err := json.Marshal(p.Summary()); err != nil {
			t.Fatalf("summary: %v", err)
		}
		p.RunTests()
		for _, s := range gridSubjects() {
			for _, r := range gridRequests()[:12] {
				d := p.Evaluate(s, r)
				if d != p.Evaluate(s, r) {
					t.Fatal("Evaluate is not deterministic")
				}
				if d.Allow && d.Rule == "" || d.Reason == "" {
					t.Fatalf("malformed decision %+v", d)
				}
				if !d.Allow && d.Limits != (Limits{}) {
					t.Fatalf("deny with limits %+v", d)
				}
				if ex := p.Explain(s, r); ex.Decision != d {
					t.Fatalf("Explain %+v != Evaluate %+v", ex.Decision, d)
				}
			}
		}
	})
}
