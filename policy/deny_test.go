package policy

import (
	"fmt"
	"strings"
	"testing"
)

// lostLaptopPolicy grants the laptop, its user and a capability every
// right by name, then denies the laptop with kernels = ["*"]: the "lost
// laptop" deny, which must leave it nothing.
const lostLaptopPolicy = `
version = 1
rule "kernel-dev" {
  subjects = ["laptop"]
  gpus     = ["*"]
  kernels  = ["*", "custom:ptx", "custom:cuda", "observe:metrics"]
}
rule "alice" {
  subjects = ["alice@example.com"]
  gpus     = ["*"]
  kernels  = ["custom:ptx"]
}
rule "granted" {
  subjects = ["cap:gpumesh.dev/cap/gpu"]
  gpus     = ["*"]
  kernels  = ["*", "custom:ptx", "custom:cuda"]
}
deny "lost-laptop" {
  subjects = ["laptop"]
  gpus     = ["*"]
  kernels  = ["*"]
}
deny "gpu1-off-limits" {
  subjects = ["desktop"]
  gpus     = ["1"]
  kernels  = ["*"]
}
`

// everyRight is everything a caller could ask the policy for.
func everyRight() []string {
	return append(BuiltinKernels(), KernelCustomPTX, KernelCustomCUDA, RightMetrics)
}

// residentRights are the kernels a server asks about (EvaluateAny) before
// it lets a caller hold buffers on a GPU.
func residentRights() []string {
	return append(BuiltinKernels(), KernelCustomPTX, KernelCustomCUDA)
}

// TestDenyStarCoversEverything attacks finding 8: the laptop is granted
// custom code by three other rules (by node, by user, by capability), and a
// deny with kernels = ["*"] must still refuse every built-in, custom code,
// resident buffers and observe:metrics, on every GPU however it is named,
// and Admits must refuse the laptop outright.
func TestDenyStarCoversEverything(t *testing.T) {
	const uuid1 = "GPU-0a1b2c3d-1111-2222-3333-444455556666"
	for _, deny := range []string{
		`kernels = ["*"]`,
		`kernels = ["*", "relu"]`,
		``, // no kernels: everything, as before
	} {
		src := replaceOnce(lostLaptopPolicy, "  kernels  = [\"*\"]\n}\ndeny \"gpu1", "  "+deny+"\n}\ndeny \"gpu1")
		p := mustParse(t, "lost.hcl", src)
		laptop := Subject{Node: "laptop", User: "alice@example.com", Caps: caps(gpuCap)}
		for _, s := range []Subject{laptop, laptop.Prepare()} {
			for _, k := range everyRight() {
				for _, r := range []Request{
					{Kernel: k}, {Kernel: k, GPU: "0"}, {Kernel: k, GPU: "1"},
					{Kernel: k, GPU: "0", GPUUUID: uuid1}, {Kernel: k, GPU: uuid1},
				} {
					if d := p.Evaluate(s, r); d.Allow || d.Rule != "lost-laptop" {
						t.Errorf("deny with %s: %+v: %+v, want denied by lost-laptop", deny, r, d)
					}
				}
			}
			for _, g := range []string{"0", "1", uuid1} {
				if d := p.EvaluateAny(s, Request{GPU: g}, residentRights()); d.Allow {
					t.Errorf("deny with %s: resident buffers on gpu %s allowed: %s", deny, g, d.Reason)
				}
			}
			if d := p.Admits(s); d.Allow || d.Rule != "lost-laptop" {
				t.Errorf("deny with %s: Admits = %+v, want refused by lost-laptop", deny, d)
			}
		}
		// The same user on another node keeps what the rules grant: the
		// deny is about the laptop, and the grants are real.
		desk := Subject{Node: "workstation", User: "alice@example.com"}
		if d := p.Evaluate(desk, Request{Kernel: KernelCustomPTX}); !d.Allow || d.Rule != "alice" {
			t.Errorf("alice's workstation: %+v, want custom:ptx allowed by rule alice", d)
		}
	}
}

// TestDenyStarOnOneGPU: a deny's "*" on one GPU refuses every kernel and
// custom code there, leaves the other GPUs alone, and, observe:metrics
// being host-wide, refuses metrics too.
func TestDenyStarOnOneGPU(t *testing.T) {
	p := mustParse(t, "lost.hcl", lostLaptopPolicy+`
rule "desktop" {
  subjects = ["desktop"]
  gpus     = ["*"]
  kernels  = ["*", "custom:ptx", "observe:metrics"]
}
`)
	s := Subject{Node: "desktop"}
	for _, k := range []string{"relu", KernelCustomPTX} {
		if d := p.Evaluate(s, Request{Kernel: k, GPU: "1"}); d.Allow || d.Rule != "gpu1-off-limits" {
			t.Errorf("%s on gpu 1: %+v, want denied", k, d)
		}
		if d := p.Evaluate(s, Request{Kernel: k, GPU: "0"}); !d.Allow {
			t.Errorf("%s on gpu 0: %+v, want allowed", k, d)
		}
	}
	if d := p.EvaluateAny(s, Request{GPU: "1"}, residentRights()); d.Allow {
		t.Errorf("buffers on gpu 1: %+v, want denied", d)
	}
	if d := p.Evaluate(s, Request{Kernel: RightMetrics}); d.Allow || d.Rule != "gpu1-off-limits" {
		t.Errorf("metrics: %+v, want denied by the deny that covers it", d)
	}
	if d := p.Admits(s); !d.Allow {
		t.Errorf("Admits: %+v, want admitted (the deny covers one GPU only)", d)
	}
}

// TestAllowStarIsBuiltinsOnly: in an allow rule, "*" keeps meaning the
// built-ins and nothing else; in a capability value too.
func TestAllowStarIsBuiltinsOnly(t *testing.T) {
	p := mustParse(t, "star.hcl", `
version = 1
rule "star" {
  subjects = ["laptop", "cap:gpumesh.dev/cap/gpu"]
  gpus     = ["*"]
  kernels  = ["*"]
}
`)
	for _, s := range []Subject{{Node: "laptop"}, {Node: "x", Caps: caps(gpuCap, `{"kernels":["*"]}`)}} {
		for _, k := range everyRight() {
			d := p.Evaluate(s, Request{Kernel: k})
			if want := isBuiltin(k); d.Allow != want {
				t.Errorf("%v %s: allow %v, want %v (%s)", s, k, d.Allow, want, d.Reason)
			}
		}
	}
}

// TestMetricsIsHostWide: observe:metrics is on no GPU, so a rule's gpus
// (and a capability value's) do not narrow it, whatever GPU the server
// passes.
func TestMetricsIsHostWide(t *testing.T) {
	p := mustParse(t, "metrics.hcl", `
version = 1
rule "scrape" {
  subjects = ["tag:prometheus", "cap:gpumesh.dev/cap/gpu"]
  gpus     = ["1"]
  kernels  = ["observe:metrics"]
}
`)
	for _, s := range []Subject{{Node: "p", Tags: []string{"tag:prometheus"}}, {Node: "q", Caps: caps(gpuCap, `{"kernels":["observe:metrics"],"gpus":["7"]}`)}} {
		for _, g := range []string{"", "0", "1"} {
			if d := p.Evaluate(s, Request{Kernel: RightMetrics, GPU: g}); !d.Allow {
				t.Errorf("%v metrics with gpu %q: %s", s, g, d.Reason)
			}
		}
		if d := p.Evaluate(s, Request{Kernel: "relu", GPU: "1"}); d.Allow {
			t.Errorf("%v: observe:metrics granted relu", s)
		}
	}
}

func replaceOnce(s, old, new string) string {
	if !strings.Contains(s, old) {
		panic(fmt.Sprintf("replaceOnce: %q not found", old))
	}
	return strings.Replace(s, old, new, 1)
}
