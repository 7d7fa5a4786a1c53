package policy

import (
	"fmt"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// Kubernetes pods as callers.
//
// A pod never joins the tailnet: a node agent (`gpumesh kube agent`)
// forwards its connections and names the pod at the start of each one. A
// host believes that name only from the agents its policy trusts:
//
//	kubernetes {
//	  trusted_agents = ["tag:k8s"]
//	}
//
// A connection from a trusted agent is then either the agent's own (its
// probes: it is admitted to Devices and Explain, and gets kernels only
// from rules naming it) or a pod's, whose Subject has Pod set. A pod is
// named by "k8s:NAMESPACE/SERVICEACCOUNT" and "k8s:NAMESPACE/*" entries
// (and "*" and groups holding them); the rules naming its agent's node,
// user, tags or capabilities grant it nothing, but their denies refuse
// it: whatever a deny takes from a node, it takes from the pods behind it.

// Pod is a Kubernetes pod as a trusted agent names it, from the
// Kubernetes API (never from anything the pod sends).
type Pod struct {
	Namespace      string
	ServiceAccount string
	// Name is the pod's name; empty when the caller is a claim that
	// several pods share (they share its namespace and service account).
	Name string
}

// String names the pod as reasons do: "k8s:ml/trainer (pod trainer-0)".
func (p *Pod) String() string {
	s := "k8s:" + p.Namespace + "/" + p.ServiceAccount
	if p.Name != "" {
		s += " (pod " + p.Name + ")"
	}
	return s
}

// ValidK8sLabel reports whether s is a DNS-1123 label (a namespace's
// form): 1 to 63 of [a-z0-9-], starting and ending with a letter or digit.
func ValidK8sLabel(s string) bool { return validDNSLabel(s) }

// ValidK8sName reports whether s is a DNS-1123 subdomain (the form of a
// service account's or a pod's name): up to 253 characters, labels of
// [a-z0-9-] joined by dots.
func ValidK8sName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if !validDNSLabel(l) {
			return false
		}
	}
	return true
}

func validDNSLabel(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i, c := range s {
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && (c != '-' || i == 0 || i == len(s)-1) {
			return false
		}
	}
	return true
}

// parseK8sSubject parses the rest of "k8s:REST": "NAMESPACE/SERVICEACCOUNT"
// or "NAMESPACE/*".
func parseK8sSubject(text, rest string) (subjectRef, error) {
	ns, sa, ok := strings.Cut(rest, "/")
	ref := subjectRef{text: text}
	if !ok {
		return ref, fmt.Errorf("subject %q: want k8s:NAMESPACE/SERVICEACCOUNT or k8s:NAMESPACE/*", text)
	}
	if !ValidK8sLabel(ns) {
		return ref, fmt.Errorf("subject %q: namespace %q is not a Kubernetes namespace name (lower-case letters, digits and '-', at most 63)", text, ns)
	}
	if sa == "*" {
		ref.kind, ref.name = kindK8sNS, ns+"/*"
		return ref, nil
	}
	if !ValidK8sName(sa) {
		return ref, fmt.Errorf("subject %q: service account %q is not a Kubernetes name (lower-case letters, digits, '-' and '.'), or \"*\" for every pod of the namespace", text, sa)
	}
	ref.kind, ref.name = kindK8sSA, ns+"/"+sa
	return ref, nil
}

// ParsePod reads "NAMESPACE/SERVICEACCOUNT", as a k8s: subject names a
// pod's service account.
func ParsePod(s string) (*Pod, error) {
	ref, err := parseK8sSubject("k8s:"+s, s)
	if err != nil {
		return nil, err
	}
	if ref.kind != kindK8sSA {
		return nil, fmt.Errorf("%q: want a pod's NAMESPACE/SERVICEACCOUNT", s)
	}
	ns, sa, _ := strings.Cut(s, "/")
	return &Pod{Namespace: ns, ServiceAccount: sa}, nil
}

// agent is the subject of the node a pod calls through.
func (s Subject) agent() Subject {
	s.Pod = nil
	return s
}

// k8sKeys are the index keys of a pod: its service account's and its
// namespace's.
func (p *Pod) keys() (sa, ns string) {
	return p.Namespace + "/" + p.ServiceAccount, p.Namespace + "/*"
}

// trustedAgents is the compiled kubernetes block.
type trustedAgents struct {
	tags []string // lower-case "tag:…"
	wg   []string // lower-case WireGuard peer names
	refs []string // as written, for the summary
}

var kubernetesSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "trusted_agents"}}}

// kubernetes compiles the kubernetes block.
func (c *compiler) kubernetes(blocks []*hcl.Block) {
	if len(blocks) > 1 {
		c.errorf(blocks[1].DefRange, "Duplicate kubernetes block",
			"A policy has at most one kubernetes block; the first is at %s.", Pos(blocks[0].DefRange))
		return
	}
	if len(blocks) == 0 {
		return
	}
	b := blocks[0]
	ct, d := b.Body.Content(kubernetesSchema)
	c.diags = append(c.diags, d...)
	a := ct.Attributes["trusted_agents"]
	if a == nil {
		if !d.HasErrors() {
			c.errorf(b.DefRange, "Missing required argument", `The kubernetes block needs trusted_agents, the tags of the nodes running gpumesh's Kubernetes agent (e.g. ["tag:k8s"]).`)
		}
		return
	}
	elems, listOK := c.strList(a)
	for _, e := range elems {
		ref, err := parseSubject(e.s)
		switch {
		case err != nil:
			c.errorf(e.rng, "Invalid trusted agent", "%s", sentence(err.Error()))
		case ref.kind == kindTag:
			c.p.agents.tags = append(c.p.agents.tags, ref.name)
			c.p.agents.refs = append(c.p.agents.refs, ref.canonical())
		case ref.kind == kindWG:
			c.p.agents.wg = append(c.p.agents.wg, ref.name)
			c.p.agents.refs = append(c.p.agents.refs, ref.canonical())
		default:
			c.errorf(e.rng, "Invalid trusted agent",
				"%q: a trusted agent can name any pod, so it is named by a tag (which only the tailnet's admins assign) or a wg: peer (bound to its key), never by a node name, user, capability, group or \"*\".", e.s)
		}
	}
	if len(elems) == 0 && listOK {
		c.errorf(a.Expr.Range(), "Empty trusted_agents", `Name the agents' tag, e.g. ["tag:k8s"], or leave the kubernetes block out.`)
	}
}

// TrustsAgent reports whether s is a trusted Kubernetes agent's own
// connection: a host reads a pod's name only from such a peer.
func (p *Policy) TrustsAgent(s Subject) bool {
	if p == nil || s.Pod != nil {
		return false
	}
	if s.WireGuard {
		return s.Node != "" && slices.Contains(p.agents.wg, lower(s.Node))
	}
	for _, t := range s.Tags {
		if slices.Contains(p.agents.tags, lower(t)) {
			return true
		}
	}
	return false
}

// TrustedAgents returns the kubernetes block's trusted_agents, canonically
// written; nil when the policy trusts no agent.
func (p *Policy) TrustedAgents() []string {
	if p == nil {
		return nil
	}
	return slices.Clone(p.agents.refs)
}

// agentAdmitted is Admits' answer for a trusted agent's own connection
// that no rule names.
func (p *Policy) agentAdmitted(s Subject) Decision {
	return Decision{
		Allow: true, Rule: "kubernetes",
		Reason: s.String() + " is a trusted Kubernetes agent (kubernetes block): it may ask Devices and Explain",
	}
}

// warnAgentRules warns when allow rule r names a trusted agent's tag: it
// grants the agent's own connections, never the pods behind it.
func (c *compiler) warnAgentRules() {
	if len(c.p.agents.tags) == 0 {
		return
	}
	for _, r := range c.p.rules {
		if r.deny {
			continue
		}
		for _, ref := range r.subjects {
			if ref.kind != kindTag || !slices.Contains(c.p.agents.tags, ref.name) {
				continue
			}
			rng := r.rng
			c.p.warnings = append(c.p.warnings, &hcl.Diagnostic{
				Severity: hcl.DiagWarning,
				Summary:  "Rule names a trusted Kubernetes agent",
				Detail: fmt.Sprintf("Rule %q names %s, which the kubernetes block trusts as an agent: it grants the agents' own connections, "+
					"never the pods behind them. Name pods with k8s:NAMESPACE/SERVICEACCOUNT or k8s:NAMESPACE/*.", r.name, ref.text),
				Subject: &rng,
			})
		}
	}
}
