package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
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
		for _, w := range p.Warnings() {
			if w.Severity != hcl.DiagWarning || w.Subject == nil || w.Subject.Filename != name || w.Subject.Start.Line < 1 {
				t.Fatalf("warning without a position: %s", formatDiag(w))
			}
		}
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
				if ed := p.ExplainDecision(s, r); ed.Allow != d.Allow || ed.Rule != d.Rule || !strings.HasPrefix(ed.Reason, d.Reason) {
					t.Fatalf("ExplainDecision %+v disagrees with Evaluate %+v", ed, d)
				}
			}
		}
	})
}

// FuzzRequestGPU: whatever GPU, UUID and kernel strings a caller sends, a
// request is allowed only when its GPU is in canonical form, a deny on GPU
// 0 (by index or UUID) is never bypassed, and the reason stays short.
func FuzzRequestGPU(f *testing.F) {
	for _, g := range []string{"", "0", "00", "+0", "-0", " 0", "1", uuid0, "gpu-", "*", "٠"} {
		f.Add(g, "", "relu")
		f.Add(g, uuid0, "custom:ptx")
	}
	p, err := Parse("gpus.hcl", []byte(gpuPolicy))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, gpu, uuid, kernel string) {
		r := Request{Kernel: kernel, GPU: gpu, GPUUUID: uuid}
		for _, node := range []string{"laptop", "desk", "lab"} {
			d := p.Evaluate(Subject{Node: node}, r)
			if len(d.Reason) > 400 {
				t.Fatalf("reason of %d bytes", len(d.Reason))
			}
			if !d.Allow {
				continue
			}
			g, u, ok := r.canonicalGPU()
			switch {
			case !ok:
				t.Fatalf("%s allowed a request naming GPU %q (uuid %q)", node, gpu, uuid)
			case node == "laptop" && g == "0":
				t.Fatalf("laptop's deny on GPU 0 bypassed by %q: %s", gpu, d.Reason)
			case node == "desk" && (g == strings.ToLower(uuid0) || u == strings.ToLower(uuid0)):
				t.Fatalf("desk's deny on GPU 0's UUID bypassed by %q/%q: %s", gpu, uuid, d.Reason)
			}
		}
	})
}
