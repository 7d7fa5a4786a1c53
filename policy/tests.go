package policy

import (
	"fmt"
	"strings"
)

// TestResult is the outcome of one of a policy file's test blocks.
type TestResult struct {
	Name    string
	Pos     string // "file:line:col" of the test block
	Pass    bool
	Want    string   // "allow" or "deny", with the rule and class the test names
	Got     Decision // what Evaluate decided
	Message string   // for a failure: what differed
}

// RunTests evaluates the file's test blocks against the policy.
func (p *Policy) RunTests() []TestResult {
	if p == nil {
		return nil
	}
	out := make([]TestResult, 0, len(p.tests))
	for _, t := range p.tests {
		d := p.Evaluate(t.subject, t.req)
		res := TestResult{Name: t.name, Pos: Pos(t.rng), Want: t.want(), Got: d, Pass: true}
		var why []string
		if d.Allow != t.expect {
			why = append(why, fmt.Sprintf("want %s, got %s", verdict(t.expect), verdict(d.Allow)))
		}
		if t.hasRule && d.Rule != t.rule {
			why = append(why, fmt.Sprintf("want rule %q to decide, got %q", t.rule, d.Rule))
		}
		if t.hasClass && d.Class != t.class {
			why = append(why, fmt.Sprintf("want class %q, got %q", t.class, d.Class))
		}
		if len(why) > 0 {
			res.Pass = false
			res.Message = strings.Join(why, "; ") + " (" + d.Reason + ")"
		}
		out = append(out, res)
	}
	return out
}

func (t testCase) want() string {
	s := verdict(t.expect)
	if t.hasRule {
		s += fmt.Sprintf(" by rule %q", t.rule)
	}
	if t.hasClass {
		s += fmt.Sprintf(" in class %q", t.class)
	}
	return s
}

func verdict(allow bool) string {
	if allow {
		return "allow"
	}
	return "deny"
}

// LoadChecked parses the policy at path and runs its test blocks; a policy
// whose tests fail is refused with an error wrapping ErrTestsFailed that
// lists the failures. This is what a server loads.
func LoadChecked(path string) (*Policy, error) {
	p, _, err := loadChecked(path)
	return p, err
}

func checkTests(p *Policy) error {
	results := p.RunTests()
	var failed []string
	for _, r := range results {
		if !r.Pass {
			failed = append(failed, fmt.Sprintf("%s: test %q: %s", r.Pos, r.Name, r.Message))
		}
	}
	if len(failed) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s: %d of %d failed:\n  %s", ErrTestsFailed, p.Source(), len(failed), len(results), strings.Join(failed, "\n  "))
}
