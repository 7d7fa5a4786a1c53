package policy

import (
	"strings"
	"testing"
)

const kubePolicy = `
version = 1
kubernetes {
  trusted_agents = ["tag:k8s", "wg:edge-agent"]
}
rule "trainers" {
  subjects       = ["k8s:ml/trainer"]
  gpus           = ["*"]
  kernels        = ["*"]
  max_memory     = "4GiB"
}
rule "ml namespace" {
  subjects = ["k8s:ml/*"]
  gpus     = ["0"]
  kernels  = ["relu"]
}
rule "agents" {
  subjects = ["tag:k8s"]
  gpus     = ["*"]
  kernels  = ["softmax"]
}
rule "laptop" {
  subjects = ["user:alice@example.com"]
  gpus     = ["*"]
  kernels  = ["saxpy"]
}
deny "quarantined nodes" {
  subjects = ["tag:quarantine"]
}
deny "no softmax for batch" {
  subjects = ["k8s:batch/*"]
  kernels  = ["softmax"]
}
rule "anyone" {
  subjects = ["*"]
  gpus     = ["*"]
  kernels  = ["reduce_sum"]
}
test "a trainer pod" {
  subject = { k8s = "ml/trainer", pod = "trainer-0", node = "k8s-node-1", tags = ["tag:k8s"] }
  kernel  = "matrix_mul"
  expect  = "allow"
  rule    = "trainers"
}
test "the agent's rule is not the pod's" {
  subject = { k8s = "web/frontend", node = "k8s-node-1", tags = ["tag:k8s"] }
  kernel  = "softmax"
  expect  = "deny"
}
`

func pod(ns, sa string, tags ...string) Subject {
	return Subject{Node: "k8s-node-1", Tags: tags, Pod: &Pod{Namespace: ns, ServiceAccount: sa, Name: sa + "-0"}}
}

// TestKubernetesSubjects: pods are named by k8s: entries and "*" only; a
// rule naming their agent grants them nothing, its denies refuse them; a
// service account is more specific than its namespace; nodes never match
// k8s: entries.
func TestKubernetesSubjects(t *testing.T) {
	p := mustParse(t, "kube.hcl", kubePolicy)
	for _, r := range p.RunTests() {
		if !r.Pass {
			t.Errorf("test %q: %s", r.Name, r.Message)
		}
	}
	for _, tt := range []struct {
		name   string
		s      Subject
		kernel string
		gpu    string
		rule   string // "" when denied
	}{
		{"trainer pod, its rule", pod("ml", "trainer", "tag:k8s"), "matrix_mul", "1", "trainers"},
		{"the service account beats the namespace", pod("ml", "trainer", "tag:k8s"), "relu", "0", "trainers"},
		{"another account of ml: the namespace rule", pod("ml", "notebook", "tag:k8s"), "relu", "0", "ml namespace"},
		{"the namespace rule's gpus", pod("ml", "notebook", "tag:k8s"), "relu", "1", ""},
		{"another namespace", pod("web", "trainer", "tag:k8s"), "matrix_mul", "0", ""},
		{"the agent's rule grants its pods nothing", pod("ml", "notebook", "tag:k8s"), "softmax", "0", ""},
		{"the agent itself has its rule", Subject{Node: "k8s-node-1", Tags: []string{"tag:k8s"}}, "softmax", "0", "agents"},
		{"a node is never a pod", Subject{Node: "trainer", Tags: []string{"tag:k8s"}}, "matrix_mul", "0", ""},
		{"a user's rule does not follow into a pod", Subject{User: "alice@example.com", Pod: &Pod{Namespace: "web", ServiceAccount: "default"}}, "saxpy", "0", ""},
		{"* names pods", pod("web", "default", "tag:k8s"), "reduce_sum", "0", "anyone"},
		{"a deny on the agent's tag refuses its pods", pod("ml", "trainer", "tag:k8s", "tag:quarantine"), "matrix_mul", "0", ""},
		{"a deny naming the namespace", pod("batch", "trainer", "tag:k8s"), "reduce_sum", "0", "anyone"},
		{"a deny naming the namespace, its kernel", pod("batch", "default", "tag:k8s"), "softmax", "0", ""},
	} {
		d := p.Evaluate(tt.s, Request{Kernel: tt.kernel, GPU: tt.gpu})
		if d.Allow != (tt.rule != "") || tt.rule != "" && d.Rule != tt.rule {
			t.Errorf("%s: allow %v by %q (%s); want rule %q", tt.name, d.Allow, d.Rule, d.Reason, tt.rule)
		}
		if ex := p.Explain(tt.s, Request{Kernel: tt.kernel, GPU: tt.gpu}); ex.Decision != d {
			t.Errorf("%s: Explain decides %+v, Evaluate %+v", tt.name, ex.Decision, d)
		}
	}
	d := p.Evaluate(pod("ml", "trainer", "tag:k8s", "tag:quarantine"), Request{Kernel: "matrix_mul"})
	if d.Rule != "quarantined nodes" || !strings.Contains(d.Reason, "forbids tag:quarantine") {
		t.Errorf("a quarantined agent's pod: %+v; want the deny naming its tag", d)
	}
	ex := p.Explain(pod("ml", "notebook", "tag:k8s"), Request{Kernel: "softmax"})
	for _, st := range ex.Steps {
		if st.Rule == "agents" && !strings.Contains(st.Outcome, "grants its pods nothing") {
			t.Errorf("explain of rule agents for a pod: %q; want it to say why the agent's rule does not apply", st.Outcome)
		}
	}
	if w := p.Warnings(); len(w) != 1 || !strings.Contains(w[0].Detail, "never the pods behind them") {
		t.Errorf("warnings %v; want one about rule agents naming the trusted tag", w)
	}
}

// TestTrustedAgents: only tags and wg: peers can be trusted agents; a pod
// is never one; an agent's own connection is admitted for Devices and
// Explain when no rule names it, and a deny still wins.
func TestTrustedAgents(t *testing.T) {
	p := mustParse(t, "kube.hcl", kubePolicy)
	agent := Subject{Node: "k8s-node-7", Tags: []string{"tag:K8s"}}
	for _, tt := range []struct {
		s    Subject
		want bool
	}{
		{agent, true},
		{Subject{Node: "edge-agent", WireGuard: true}, true},
		{Subject{Node: "edge-agent"}, false}, // a tailnet node of that name is not the wg peer
		{Subject{Node: "k8s-node-1"}, false},
		{Subject{Node: "laptop", User: "alice@example.com"}, false},
		{pod("ml", "trainer", "tag:k8s"), false},
	} {
		if got := p.TrustsAgent(tt.s); got != tt.want {
			t.Errorf("TrustsAgent(%+v) = %v; want %v", tt.s, got, tt.want)
		}
	}
	if got := p.TrustedAgents(); strings.Join(got, ",") != "tag:k8s,wg:edge-agent" {
		t.Errorf("TrustedAgents() = %v", got)
	}
	noRule := mustParse(t, "k.hcl", `
version = 1
kubernetes { trusted_agents = ["tag:k8s"] }
deny "lost" { subjects = ["lost-node"] }
`)
	if d := noRule.Admits(agent); !d.Allow || d.Rule != "kubernetes" {
		t.Errorf("Admits(trusted agent) = %+v; want allowed by the kubernetes block", d)
	}
	if d := noRule.Evaluate(agent, Request{Kernel: "matrix_mul"}); d.Allow {
		t.Errorf("a trusted agent with no rule may run matrix_mul: %+v", d)
	}
	lost := Subject{Node: "lost-node", Tags: []string{"tag:k8s"}}
	if d := noRule.Admits(lost); d.Allow {
		t.Errorf("Admits(a denied trusted agent) = %+v; want the deny", d)
	}
	if d := noRule.Admits(Subject{Node: "stranger"}); d.Allow {
		t.Errorf("Admits(stranger) = %+v", d)
	}
	if d := noRule.Admits(pod("ml", "x", "tag:k8s")); d.Allow {
		t.Errorf("Admits(a pod no rule names) = %+v; want refused", d)
	}
	if d := p.Admits(pod("ml", "x", "tag:k8s")); !d.Allow || d.Rule != "ml namespace" {
		t.Errorf("Admits(a pod of ml) = %+v; want the namespace rule", d)
	}
	if d := p.Admits(pod("ml", "x", "tag:k8s", "tag:quarantine")); d.Allow {
		t.Errorf("Admits(a pod behind a quarantined agent) = %+v; want the deny", d)
	}
	if DenyAll().TrustsAgent(agent) {
		t.Error("a policy without a kubernetes block trusts an agent")
	}
}

func TestKubernetesParseErrors(t *testing.T) {
	for _, tt := range []struct{ src, want string }{
		{`rule "r" {` + "\n" + `subjects = ["k8s:ml"] ` + "\n" + `gpus = ["*"]` + "\n" + `kernels = ["*"]` + "\n}", "want k8s:NAMESPACE/SERVICEACCOUNT"},
		{`rule "r" {` + "\n" + `subjects = ["k8s:ML/x"] ` + "\n" + `gpus = ["*"]` + "\n" + `kernels = ["*"]` + "\n}", "not a Kubernetes namespace name"},
		{`rule "r" {` + "\n" + `subjects = ["k8s:ml/Bad_Name"] ` + "\n" + `gpus = ["*"]` + "\n" + `kernels = ["*"]` + "\n}", "not a Kubernetes name"},
		{`rule "r" {` + "\n" + `subjects = ["k8s:-ml/x"] ` + "\n" + `gpus = ["*"]` + "\n" + `kernels = ["*"]` + "\n}", "not a Kubernetes namespace name"},
		{`kubernetes { trusted_agents = ["k8s-node-1"] }`, "never by a node name"},
		{`kubernetes { trusted_agents = ["*"] }`, "never by a node name"},
		{`kubernetes { trusted_agents = ["k8s:ml/x"] }`, "never by a node name"},
		{`kubernetes { trusted_agents = [] }`, "Empty trusted_agents"},
		{`kubernetes {}`, "needs trusted_agents"},
		{`kubernetes { trusted_agents = ["tag:k8s"] }` + "\n" + `kubernetes { trusted_agents = ["tag:k8s"] }`, "at most one kubernetes block"},
		{`kubernetes { trusted_agent = ["tag:k8s"] }`, "trusted_agent"},
		{`test "t" {` + "\n" + `subject = { k8s = "ml" }` + "\n" + `kernel = "relu"` + "\n" + `expect = "deny"` + "\n}", "NAMESPACE/SERVICEACCOUNT"},
		{`test "t" {` + "\n" + `subject = { pod = "p" }` + "\n" + `kernel = "relu"` + "\n" + `expect = "deny"` + "\n}", "needs k8s"},
	} {
		_, err := Parse("k.hcl", []byte("version = 1\n"+tt.src+"\n"))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s\n  = %v; want an error containing %q", tt.src, err, tt.want)
		}
	}
}

func TestK8sNames(t *testing.T) {
	for _, tt := range []struct {
		s            string
		label, named bool
	}{
		{"ml", true, true},
		{"a-b.c", false, true},
		{"a", true, true},
		{"", false, false},
		{"-a", false, false},
		{"a-", false, false},
		{"A", false, false},
		{"a..b", false, false},
		{strings.Repeat("a", 63), true, true},
		{strings.Repeat("a", 64), false, false},
		{strings.Repeat("a", 64) + ".b", false, false},
		{strings.Repeat("a.", 126) + "a", false, true},
		{strings.Repeat("a.", 127) + "a", false, false},
	} {
		if got := ValidK8sLabel(tt.s); got != tt.label {
			t.Errorf("ValidK8sLabel(%q) = %v", tt.s, got)
		}
		if got := ValidK8sName(tt.s); got != tt.named {
			t.Errorf("ValidK8sName(%q) = %v", tt.s, got)
		}
	}
}
