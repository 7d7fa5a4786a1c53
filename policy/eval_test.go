package policy

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/dscp"
)

// overlapPolicy has one rule per subject kind, all covering relu on GPU 0,
// each with a distinct max_concurrent so that a decision shows which rule's
// limits applied.
const overlapPolicy = `
version = 1

group "ml" {
  members = ["alice@example.com", "laptop", "tablet", "tag:gpu-users", "wg:ws2", "cap:example.com/cap/ml"]
}

class "fast" { dscp = "EF" }
class "slow" {
  dscp     = "CS1"
  priority = 7
}

rule "any" {
  subjects       = ["*"]
  gpus           = ["0"]
  kernels        = ["relu"]
  max_concurrent = 1
  class          = "slow"
}
rule "group" {
  subjects       = ["group:ml"]
  gpus           = ["0"]
  kernels        = ["relu", "saxpy"]
  max_concurrent = 2
}
rule "tag" {
  subjects       = ["tag:ci"]
  gpus           = ["0"]
  kernels        = ["relu", "saxpy"]
  max_concurrent = 3
}
rule "cap" {
  subjects       = ["cap:gpumesh.dev/cap/gpu"]
  gpus           = ["*"]
  kernels        = ["*"]
  max_concurrent = 4
}
rule "user" {
  subjects       = ["alice@example.com"]
  gpus           = ["0"]
  kernels        = ["relu", "saxpy"]
  max_concurrent = 5
}
rule "node" {
  subjects       = ["laptop"]
  gpus           = ["0"]
  kernels        = ["relu", "saxpy"]
  max_concurrent = 6
  class          = "fast"
}
rule "wg" {
  subjects       = ["wg:ws"]
  gpus           = ["*"]
  kernels        = ["*"]
  max_concurrent = 7
}
rule "desk-first" {
  subjects       = ["desk"]
  gpus           = ["0"]
  kernels        = ["relu"]
  max_concurrent = 8
}
rule "desk-second" {
  subjects       = ["node:desk", "tag:ci"]
  gpus           = ["0"]
  kernels        = ["relu", "saxpy"]
  max_concurrent = 9
}
rule "uuid" {
  subjects       = ["uuid-user"]
  gpus           = ["GPU-0A1B2C3D-1111-2222-3333-444455556666"]
  kernels        = ["matrix_mul"]
  max_concurrent = 10
}
rule "custom" {
  subjects       = ["kernel-dev"]
  gpus           = ["0"]
  kernels        = ["*", "custom:ptx"]
  max_concurrent = 11
}

deny "quarantine" {
  subjects = ["tag:quarantine"]
}
deny "no-saxpy-for-bob" {
  subjects = ["bob@example.com"]
  kernels  = ["saxpy"]
}
`

func mustParse(t testing.TB, name, src string) *Policy {
	t.Helper()
	p, err := Parse(name, []byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return p
}

func caps(name string, values ...string) map[string][]json.RawMessage {
	vs := []json.RawMessage{}
	for _, v := range values {
		vs = append(vs, json.RawMessage(v))
	}
	return map[string][]json.RawMessage{name: vs}
}

const gpuCap = "gpumesh.dev/cap/gpu"

func TestEvaluate(t *testing.T) {
	p := mustParse(t, "overlap.hcl", overlapPolicy)
	relu := Request{Kernel: "relu", GPU: "0"}
	saxpy := Request{Kernel: "saxpy", GPU: "0"}
	for _, tc := range []struct {
		name  string
		s     Subject
		r     Request
		rule  string // "" for default deny
		allow bool
		conc  int    // the deciding rule's max_concurrent, when allowed
		class string // when allowed
	}{
		// One subject kind at a time.
		{"any identified caller", Subject{Node: "someone"}, relu, "any", true, 1, "slow"},
		{"group by node member", Subject{Node: "tablet"}, saxpy, "group", true, 2, ""},
		{"group by user member", Subject{Node: "x", User: "alice@example.com"}, Request{Kernel: "saxpy"}, "user", true, 5, ""},
		{"group by tag member", Subject{Node: "x", Tags: []string{"tag:gpu-users"}}, saxpy, "group", true, 2, ""},
		{"group by wg member", Subject{Node: "ws2", WireGuard: true}, saxpy, "group", true, 2, ""},
		{"group by cap member", Subject{Node: "x", Caps: caps("example.com/cap/ml")}, saxpy, "group", true, 2, ""},
		{"tag", Subject{Node: "runner", Tags: []string{"tag:ci"}}, saxpy, "tag", true, 3, ""},
		{"cap without values", Subject{Node: "x", Caps: caps(gpuCap)}, Request{Kernel: "matrix_mul", GPU: "3"}, "cap", true, 4, ""},
		{"user", Subject{Node: "alices-desk", User: "alice@example.com"}, relu, "user", true, 5, ""},
		{"node", Subject{Node: "laptop"}, relu, "node", true, 6, "fast"},
		{"wg peer", Subject{Node: "ws", WireGuard: true}, Request{Kernel: "softmax", GPU: "2"}, "wg", true, 7, ""},

		// Overlap: the most specific subject entry decides the limits.
		{"node beats user", Subject{Node: "laptop", User: "alice@example.com"}, relu, "node", true, 6, "fast"},
		{"user beats cap", Subject{Node: "x", User: "alice@example.com", Caps: caps(gpuCap)}, relu, "user", true, 5, ""},
		{"cap beats tag", Subject{Node: "x", Tags: []string{"tag:ci"}, Caps: caps(gpuCap)}, saxpy, "cap", true, 4, ""},
		{"tag beats group", Subject{Node: "x", Tags: []string{"tag:ci", "tag:gpu-users"}}, saxpy, "tag", true, 3, ""},
		{"group beats any", Subject{Node: "x", Tags: []string{"tag:gpu-users"}}, relu, "group", true, 2, ""},
		{"equal specificity: first written wins", Subject{Node: "desk"}, relu, "desk-first", true, 8, ""},
		{"a rule's most specific entry counts", Subject{Node: "desk", Tags: []string{"tag:ci"}}, saxpy, "desk-second", true, 9, ""},
		{"specific rule not covering the kernel does not shadow", Subject{Node: "laptop"}, Request{Kernel: "relu", GPU: "0"}, "node", true, 6, "fast"},
		{"falls through to a broader rule for other kernels", Subject{Node: "desk"}, saxpy, "desk-second", true, 9, ""},
		{"deny beats a more specific allow", Subject{Node: "laptop", Tags: []string{"tag:quarantine"}}, relu, "quarantine", false, 0, ""},
		{"deny only for its kernels", Subject{Node: "bobs", User: "bob@example.com"}, saxpy, "no-saxpy-for-bob", false, 0, ""},
		{"deny leaves other kernels", Subject{Node: "bobs", User: "bob@example.com"}, relu, "any", true, 1, "slow"},
		{"deny without kernels covers custom code", Subject{Node: "kernel-dev", Tags: []string{"tag:quarantine"}}, Request{Kernel: "custom:ptx"}, "quarantine", false, 0, ""},

		// Capabilities narrow the rules they match through.
		{"cap value permits", Subject{Node: "x", Caps: caps(gpuCap, `{"kernels":["matrix_mul"],"gpus":["1"]}`)}, Request{Kernel: "matrix_mul", GPU: "1"}, "cap", true, 4, ""},
		{"cap value narrows kernels", Subject{Node: "x", Caps: caps(gpuCap, `{"kernels":["saxpy"]}`)}, Request{Kernel: "matrix_mul", GPU: "1"}, "", false, 0, ""},
		{"cap value narrows gpus", Subject{Node: "x", Caps: caps(gpuCap, `{"gpus":["0"]}`)}, Request{Kernel: "matrix_mul", GPU: "1"}, "", false, 0, ""},
		{"narrowed cap falls back to a broader rule", Subject{Node: "x", Caps: caps(gpuCap, `{"kernels":["saxpy"]}`)}, relu, "any", true, 1, "slow"},
		{"cap values are a union", Subject{Node: "x", Caps: caps(gpuCap, `{"kernels":["saxpy"]}`, `{"kernels":["*"],"gpus":["2"]}`)}, Request{Kernel: "softmax", GPU: "2"}, "cap", true, 4, ""},
		{"cap star is built-ins only", Subject{Node: "x", Caps: caps(gpuCap, `{"kernels":["*"]}`)}, Request{Kernel: "custom:ptx"}, "", false, 0, ""},
		{"cap value not an object permits nothing", Subject{Node: "x", Caps: caps(gpuCap, `true`)}, Request{Kernel: "softmax", GPU: "2"}, "", false, 0, ""},
		{"cap value with unknown field permits nothing", Subject{Node: "x", Caps: caps(gpuCap, `{"kernels":["*"],"max_memory":"1GiB"}`)}, Request{Kernel: "softmax", GPU: "2"}, "", false, 0, ""},
		{"cap value of wrong type permits nothing", Subject{Node: "x", Caps: caps(gpuCap, `{"kernels":"softmax"}`)}, Request{Kernel: "softmax", GPU: "2"}, "", false, 0, ""},
		{"cap name is exact", Subject{Node: "x", Caps: caps("GPUMESH.dev/cap/gpu")}, Request{Kernel: "softmax", GPU: "2"}, "", false, 0, ""},

		// Names.
		{"node names are case-insensitive", Subject{Node: "LapTop"}, relu, "node", true, 6, "fast"},
		{"logins are case-insensitive", Subject{Node: "x", User: "Alice@Example.COM"}, relu, "user", true, 5, ""},
		{"tags are case-insensitive", Subject{Node: "x", Tags: []string{"tag:CI"}}, saxpy, "tag", true, 3, ""},
		{"a node is not the wg peer of that name", Subject{Node: "ws"}, Request{Kernel: "softmax"}, "", false, 0, ""},
		{"a wg peer is not the node of that name", Subject{Node: "laptop", WireGuard: true}, saxpy, "", false, 0, ""},
		{"gpu by uuid", Subject{Node: "uuid-user"}, Request{Kernel: "matrix_mul", GPU: "gpu-0a1b2c3d-1111-2222-3333-444455556666"}, "uuid", true, 10, ""},
		{"gpu by index with its uuid", Subject{Node: "uuid-user"}, Request{Kernel: "matrix_mul", GPU: "3", GPUUUID: "GPU-0A1B2C3D-1111-2222-3333-444455556666"}, "uuid", true, 10, ""},
		{"gpu by index alone", Subject{Node: "uuid-user"}, Request{Kernel: "matrix_mul", GPU: "3"}, "", false, 0, ""},
		{"empty gpu is gpu 0", Subject{Node: "laptop"}, Request{Kernel: "relu"}, "node", true, 6, "fast"},

		// Custom code.
		{"star does not grant custom ptx", Subject{Node: "ws", WireGuard: true}, Request{Kernel: "custom:ptx"}, "", false, 0, ""},
		{"star does not grant custom cuda", Subject{Node: "ws", WireGuard: true}, Request{Kernel: "custom:cuda"}, "", false, 0, ""},
		{"custom ptx granted by name", Subject{Node: "kernel-dev"}, Request{Kernel: "custom:ptx"}, "custom", true, 11, ""},
		{"custom ptx does not grant cuda", Subject{Node: "kernel-dev"}, Request{Kernel: "custom:cuda"}, "", false, 0, ""},

		// Default deny.
		{"stranger", Subject{Node: "stranger"}, saxpy, "", false, 0, ""},
		{"wrong gpu", Subject{Node: "laptop"}, Request{Kernel: "relu", GPU: "1"}, "", false, 0, ""},
		{"unknown kernel", Subject{Node: "laptop"}, Request{Kernel: "conv9d"}, "", false, 0, ""},
		{"empty kernel", Subject{Node: "ws", WireGuard: true}, Request{}, "", false, 0, ""},
		{"unidentified caller", Subject{}, relu, "", false, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := p.Evaluate(tc.s, tc.r)
			if d.Allow != tc.allow || d.Rule != tc.rule {
				t.Fatalf("got allow=%v rule=%q (%s), want allow=%v rule=%q", d.Allow, d.Rule, d.Reason, tc.allow, tc.rule)
			}
			if d.Limits.MaxConcurrent != tc.conc || d.Class != tc.class {
				t.Errorf("got max_concurrent=%d class=%q, want %d %q", d.Limits.MaxConcurrent, d.Class, tc.conc, tc.class)
			}
			if !d.Allow && d.Limits != (Limits{}) {
				t.Errorf("denied with limits %+v", d.Limits)
			}
			if d.Reason == "" {
				t.Error("empty reason")
			}
			if tc.rule == "" && !strings.Contains(d.Reason, "deny") {
				t.Errorf("default deny reason %q does not say so", d.Reason)
			}
			ex := p.Explain(tc.s, tc.r)
			if ex.Decision != d {
				t.Errorf("Explain decided %+v, Evaluate %+v", ex.Decision, d)
			}
			deciding := 0
			for _, st := range ex.Steps {
				if strings.HasPrefix(st.Outcome, "decides") {
					deciding++
					if st.Rule != d.Rule {
						t.Errorf("step %q decides, decision names %q", st.Rule, d.Rule)
					}
				}
			}
			if want := map[bool]int{true: 1, false: 0}[tc.rule != ""]; deciding != want && !tc.s.empty() {
				t.Errorf("%d deciding steps, want %d: %+v", deciding, want, ex.Steps)
			}
		})
	}
}

func TestReasons(t *testing.T) {
	p := mustParse(t, "team.hcl", `
version = 1
group "ml" { members = ["laptop"] }
rule "team" {
  subjects = ["group:ml"]
  gpus     = ["0"]
  kernels  = ["matrix_mul"]
}
deny "everyone-gpu1" {
  subjects = ["*"]
  gpus     = ["1"]
}
`)
	for _, tc := range []struct {
		s    Subject
		r    Request
		want string
	}{
		{Subject{Node: "laptop"}, Request{Kernel: "matrix_mul", GPU: "0"}, `rule "team" allows group:ml to call matrix_mul on gpu 0`},
		{Subject{Node: "laptop"}, Request{Kernel: "custom:ptx"}, `no rule allows laptop to call custom:ptx on gpu 0 (default deny)`},
		{Subject{Node: "laptop"}, Request{Kernel: "matrix_mul", GPU: "1"}, `deny "everyone-gpu1" forbids any caller to call matrix_mul on gpu 1`},
		{Subject{Node: "ws", WireGuard: true}, Request{Kernel: "relu"}, `no rule allows wg:ws to call relu on gpu 0 (default deny)`},
	} {
		if got := p.Evaluate(tc.s, tc.r).Reason; got != tc.want {
			t.Errorf("reason %q, want %q", got, tc.want)
		}
	}
	var nilPolicy *Policy
	if d := nilPolicy.Evaluate(Subject{Node: "laptop"}, Request{Kernel: "relu"}); d.Allow || d.Reason == "" {
		t.Errorf("nil policy: %+v", d)
	}
}

func TestLimits(t *testing.T) {
	p := mustParse(t, "limits.hcl", `
version = 1
class "bulk" { dscp = "AF11" }
rule "all" {
  subjects       = ["full"]
  gpus           = ["*"]
  kernels        = ["*"]
  max_memory     = "2GiB"
  max_concurrent = 4
  rate           = 50
  burst          = 10
  max_request    = "64MiB"
  idle_timeout   = "10m"
  class          = "bulk"
}
rule "rate-only" {
  subjects = ["rate-only"]
  gpus     = ["*"]
  kernels  = ["*"]
  rate     = 2.5
}
rule "slow-rate" {
  subjects = ["slow-rate"]
  gpus     = ["*"]
  kernels  = ["*"]
  rate     = 0.2
}
rule "numbers" {
  subjects    = ["numbers"]
  gpus        = ["*"]
  kernels     = ["*"]
  max_memory  = 1048576
  max_request = "1.5KB"
}
rule "none" {
  subjects = ["none"]
  gpus     = ["*"]
  kernels  = ["*"]
}
`)
	for _, tc := range []struct {
		node  string
		want  Limits
		class string
	}{
		{"full", Limits{MaxMemory: 2 << 30, MaxConcurrent: 4, Rate: 50, Burst: 10, MaxRequestBytes: 64 << 20, IdleTimeout: 10 * time.Minute}, "bulk"},
		{"rate-only", Limits{Rate: 2.5, Burst: 3}, ""},
		{"slow-rate", Limits{Rate: 0.2, Burst: 1}, ""},
		{"numbers", Limits{MaxMemory: 1 << 20, MaxRequestBytes: 1500}, ""},
		{"none", Limits{}, ""},
	} {
		d := p.Evaluate(Subject{Node: tc.node}, Request{Kernel: "relu"})
		if !d.Allow || d.Limits != tc.want || d.Class != tc.class {
			t.Errorf("%s: got %+v class %q, want %+v class %q", tc.node, d.Limits, d.Class, tc.want, tc.class)
		}
	}
	cl, ok := p.Class("bulk")
	if !ok || cl != (Class{Name: "bulk", DSCP: dscp.AF11}) {
		t.Errorf("class bulk: %+v %v", cl, ok)
	}
}

func TestDenyAllAllowAll(t *testing.T) {
	s := Subject{Node: "laptop"}
	for _, k := range []string{"matrix_mul", "custom:ptx", "custom:cuda"} {
		if d := DenyAll().Evaluate(s, Request{Kernel: k}); d.Allow {
			t.Errorf("DenyAll allowed %s", k)
		}
		if d := AllowAllForTest().Evaluate(s, Request{Kernel: k, GPU: "7"}); !d.Allow || d.Limits != (Limits{}) {
			t.Errorf("AllowAllForTest: %s: %+v", k, d)
		}
	}
	if d := AllowAllForTest().Evaluate(Subject{}, Request{Kernel: "relu"}); d.Allow {
		t.Error("AllowAllForTest allowed a caller with no identity")
	}
}

func TestPolicyIsImmutable(t *testing.T) {
	p := mustParse(t, "c.hcl", `
version = 1
class "a" { dscp = "EF" }
`)
	cs := p.Classes()
	cs[0].DSCP = dscp.CS0
	if got := p.Classes(); !reflect.DeepEqual(got, []Class{{Name: "a", DSCP: dscp.EF}}) {
		t.Errorf("Classes() leaked internal state: %+v", got)
	}
}

func TestEvaluateAny(t *testing.T) {
	p := mustParse(t, "any.hcl", `
version = 1
class "fast" {
  dscp = "EF"
}
rule "relu only" {
  subjects = ["laptop"]
  kernels  = ["relu"]
  gpus     = ["*"]
  class    = "fast"
}
`)
	laptop := Subject{Node: "laptop"}
	if d := p.EvaluateAny(laptop, Request{GPU: "0"}, []string{"saxpy", "relu", "softmax"}); !d.Allow || d.Class != "fast" {
		t.Errorf("laptop, saxpy|relu|softmax: %+v; want allowed by relu's rule, class fast", d)
	}
	d := p.EvaluateAny(Subject{Node: "stranger"}, Request{GPU: "0"}, []string{"saxpy", "relu"})
	if want := p.Evaluate(Subject{Node: "stranger"}, Request{Kernel: "saxpy", GPU: "0"}); d.Allow || d.Reason != want.Reason {
		t.Errorf("stranger: %+v; want the first kernel's denial %q", d, want.Reason)
	}
	if d := p.EvaluateAny(laptop, Request{Kernel: "relu"}, nil); !d.Allow {
		t.Errorf("no kernels: %+v; want the request as given (relu) decided", d)
	}
}
