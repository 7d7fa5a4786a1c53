package policy

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// manyRules returns a policy with n rules spread over every subject kind,
// and 20 groups of 5 members each.
func manyRules(n int) string {
	var b strings.Builder
	b.WriteString("version = 1\nclass \"c\" { dscp = \"AF21\" }\n")
	for g := range 20 {
		fmt.Fprintf(&b, "group \"g%d\" { members = [\"node-%d\", \"user-%d@example.com\", \"tag:t-%d\", \"node-x%d\", \"wg:peer-%d\"] }\n", g, g, g+1, g+2, g, g)
	}
	for i := range n {
		var subj string
		switch i % 5 {
		case 0:
			subj = fmt.Sprintf("node-%d", i)
		case 1:
			subj = fmt.Sprintf("user-%d@example.com", i)
		case 2:
			subj = fmt.Sprintf("tag:t-%d", i)
		case 3:
			subj = fmt.Sprintf("group:g%d", i%20)
		case 4:
			subj = fmt.Sprintf("cap:example.com/cap/c%d", i)
		}
		gpus := `["0"]`
		if i%3 == 0 {
			gpus = `["*"]`
		}
		kernels := `["matrix_mul", "saxpy"]`
		if i%4 == 0 {
			kernels = `["*"]`
		}
		fmt.Fprintf(&b, "rule \"r%d\" {\n subjects = [%q]\n gpus = %s\n kernels = %s\n max_concurrent = %d\n class = \"c\"\n}\n", i, subj, gpus, kernels, i+1)
	}
	b.WriteString("deny \"d\" {\n subjects = [\"tag:quarantine\"]\n}\n")
	return b.String()
}

// benchSubject is named by several of manyRules' rules: as a node, a user,
// two tags and (through those) groups.
var benchSubject = Subject{Node: "node-5", User: "user-6@example.com", Tags: []string{"tag:t-7", "tag:t-12"}}

var onePolicy = `version = 1
rule "only" {
  subjects = ["node-5"]
  gpus     = ["0"]
  kernels  = ["matrix_mul"]
}
`

// benchEvaluate times p.Evaluate(s, r) and, in the same run and with the
// same N, a one-rule policy's evaluation: it reports the ratio as x1rule.
// The two are interleaved in chunks, so that load from other processes on
// a shared machine falls on both alike.
func benchEvaluate(b *testing.B, p *Policy, s Subject, r Request, wantAllow bool) {
	if d := p.Evaluate(s, r); d.Allow != wantAllow {
		b.Fatalf("decision %+v", d)
	}
	one := mustParse(b, "one.hcl", onePolicy)
	oneReq := Request{Kernel: "matrix_mul", GPU: "0"}
	const chunk = 256
	var target, base time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; done += chunk {
		n := min(chunk, b.N-done)
		t0 := time.Now()
		for range n {
			p.Evaluate(s, r)
		}
		target += time.Since(t0)
		b.StopTimer()
		t0 = time.Now()
		for range n {
			one.Evaluate(benchSubject, oneReq)
		}
		base += time.Since(t0)
		b.StartTimer()
	}
	if base > 0 {
		b.ReportMetric(float64(target)/float64(base), "x1rule")
	}
}

func BenchmarkEvaluate1Rule(b *testing.B) {
	p := mustParse(b, "one.hcl", onePolicy)
	benchEvaluate(b, p, benchSubject, Request{Kernel: "matrix_mul", GPU: "0"}, true)
}

// BenchmarkEvaluate200Rules is the per-call cost on the server's hot path.
func BenchmarkEvaluate200Rules(b *testing.B) {
	p := mustParse(b, "many.hcl", manyRules(200))
	benchEvaluate(b, p, benchSubject, Request{Kernel: "matrix_mul", GPU: "0"}, true)
}

func BenchmarkEvaluate200RulesDefaultDeny(b *testing.B) {
	p := mustParse(b, "many.hcl", manyRules(200))
	benchEvaluate(b, p, Subject{Node: "stranger"}, Request{Kernel: "matrix_mul", GPU: "0"}, false)
}

// BenchmarkEvaluate200RulesCap includes decoding the capability's value.
func BenchmarkEvaluate200RulesCap(b *testing.B) {
	p := mustParse(b, "many.hcl", manyRules(200))
	s := Subject{Node: "contractor", Caps: map[string][]json.RawMessage{
		"example.com/cap/c4": {json.RawMessage(`{"kernels":["matrix_mul"],"gpus":["0"]}`)},
	}}
	benchEvaluate(b, p, s, Request{Kernel: "matrix_mul", GPU: "0"}, true)
}

func BenchmarkParse200Rules(b *testing.B) {
	src := []byte(manyRules(200))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse("many.hcl", src); err != nil {
			b.Fatal(err)
		}
	}
}

func TestManyRulesDecide(t *testing.T) {
	p := mustParse(t, "many.hcl", manyRules(200))
	d := p.Evaluate(benchSubject, Request{Kernel: "matrix_mul", GPU: "0"})
	// node-5 is named by rule r5 (node kind, the most specific).
	if !d.Allow || d.Rule != "r5" || d.Limits.MaxConcurrent != 6 {
		t.Errorf("got %+v", d)
	}
	d = p.Evaluate(Subject{Node: "node-5", Tags: []string{"tag:quarantine"}}, Request{Kernel: "matrix_mul"})
	if d.Allow || d.Rule != "d" {
		t.Errorf("quarantine: %+v", d)
	}
}

// BenchmarkEvaluate200RulesCapPrepared is the cap: evaluation a server
// does: the subject is prepared once per identity lookup (Subject.Prepare),
// so the capability's JSON is not decoded per call. Goal: x1rule ≤ 2.
func BenchmarkEvaluate200RulesCapPrepared(b *testing.B) {
	p := mustParse(b, "many.hcl", manyRules(200))
	s := Subject{Node: "contractor", Caps: map[string][]json.RawMessage{
		"example.com/cap/c4": {json.RawMessage(`{"kernels":["matrix_mul"],"gpus":["0"]}`)},
	}}.Prepare()
	benchEvaluate(b, p, s, Request{Kernel: "matrix_mul", GPU: "0"}, true)
}
