package policy

import (
	"bytes"
	"encoding/json"
	"strings"
)

// entry says that a rule applies to a subject key, through which subject
// entry and at what specificity.
type entry struct {
	rule *rule
	spec int    // specificity of the subject entry that matched
	via  string // the entry as written: "group:ml", "laptop", "cap:…"
	cap  string // for entries that match through an app capability: its name
}

// index maps subject keys to the rules that name them, groups expanded, so
// that evaluating a request touches only the rules about its subject.
type index struct {
	nodes, users, tags, wg, caps map[string][]entry
	k8s                          map[string][]entry // "NS/SA" and "NS/*"
	any                          []entry
}

func buildIndex(p *Policy) index {
	idx := index{
		nodes: map[string][]entry{}, users: map[string][]entry{}, tags: map[string][]entry{},
		wg: map[string][]entry{}, caps: map[string][]entry{}, k8s: map[string][]entry{},
	}
	groups := map[string]*group{}
	for i := range p.groups {
		groups[p.groups[i].name] = &p.groups[i]
	}
	var add func(r *rule, ref subjectRef, spec int, via string)
	add = func(r *rule, ref subjectRef, spec int, via string) {
		e := entry{rule: r, spec: spec, via: via}
		switch ref.kind {
		case kindAny:
			idx.any = append(idx.any, e)
		case kindNode:
			idx.nodes[ref.name] = append(idx.nodes[ref.name], e)
		case kindWG:
			idx.wg[ref.name] = append(idx.wg[ref.name], e)
		case kindUser:
			idx.users[ref.name] = append(idx.users[ref.name], e)
		case kindTag:
			idx.tags[ref.name] = append(idx.tags[ref.name], e)
		case kindCap:
			e.cap = ref.name
			idx.caps[ref.name] = append(idx.caps[ref.name], e)
		case kindK8sNS, kindK8sSA:
			idx.k8s[ref.name] = append(idx.k8s[ref.name], e)
		case kindGroup:
			if g := groups[ref.name]; g != nil {
				for _, m := range g.members {
					add(r, m, spec, via)
				}
			}
		}
	}
	for _, r := range p.rules {
		for _, ref := range r.subjects {
			add(r, ref, ref.kind.specificity(), ref.text)
		}
	}
	return idx
}

// Evaluate decides whether s may make request r. It is a pure function of
// the policy, the subject and the request. The combining rule:
//
//  1. Only rules whose subjects include the caller and whose gpus and kernels
//     include the request are considered ("matching" rules). A rule that
//     matched through a cap: subject must also be permitted by the
//     capability's values.
//  2. If any deny block matches, the call is denied, whatever allows it.
//  3. Otherwise the most specific matching rule allows the call and sets its
//     limits and class. Specificity is that of the subject entry that
//     matched: node or wg > user > cap > tag > group > "*". Between equally
//     specific rules the one written first wins.
//  4. If no rule matches, the call is denied (default deny).
func (p *Policy) Evaluate(s Subject, r Request) Decision {
	if p == nil {
		return Decision{Reason: "no policy is in force (deny all)"}
	}
	if s.empty() {
		return Decision{Reason: "the caller has no identity (default deny)"}
	}
	gpu, uuid, ok := r.canonicalGPU()
	if !ok {
		return Decision{Reason: "gpu " + clip(r.GPU) + gpuUUIDText(r) + " is not a GPU index or UUID in canonical form (default deny)"}
	}
	var allow, deny entry
	consider := func(es []entry, denyOnly bool) {
		for _, e := range es {
			if denyOnly && !e.rule.deny || !e.rule.covers(r.Kernel, gpu, uuid) {
				continue
			}
			if e.rule.deny {
				if deny.rule == nil || better(e, deny) {
					deny = e
				}
				continue
			}
			if allow.rule != nil && !better(e, allow) {
				continue
			}
			if e.cap != "" && !s.capPermits(e.cap, r.Kernel, gpu, uuid) {
				continue
			}
			allow = e
		}
	}
	s.forEachKey(p, consider)

	on := clip(r.Kernel) + " on gpu " + gpu
	switch {
	case deny.rule != nil:
		return Decision{
			Rule:   deny.rule.name,
			Reason: "deny " + quote(deny.rule.name) + " forbids " + deny.who() + " to call " + on,
		}
	case allow.rule != nil:
		return Decision{
			Allow:  true,
			Rule:   allow.rule.name,
			Reason: "rule " + quote(allow.rule.name) + " allows " + allow.who() + " to call " + on,
			Limits: allow.rule.limits,
			Class:  allow.rule.class,
		}
	}
	return Decision{Reason: "no rule allows " + s.String() + " to call " + on + " (default deny)"}
}

// gpuUUIDText is " (uuid …)" for a request that gives a GPU UUID.
func gpuUUIDText(r Request) string {
	if r.GPUUUID == "" {
		return ""
	}
	return " (uuid " + clip(r.GPUUUID) + ")"
}

// who names the subject entry that matched, for reasons.
func (e entry) who() string {
	if e.via == "*" {
		return "any caller"
	}
	return e.via
}

// better reports whether a should decide rather than b.
func better(a, b entry) bool {
	return a.spec > b.spec || a.spec == b.spec && a.rule.order < b.rule.order
}

func quote(s string) string { return `"` + s + `"` }

// capValue is one value of the gpumesh app capability. Every field is
// optional; a field that is present narrows what the capability permits.
type capValue struct {
	Kernels *[]string `json:"kernels"`
	GPUs    *[]string `json:"gpus"`
}

// capDecoded is one capability value, decoded (ok) or not decodable.
type capDecoded struct {
	v  capValue
	ok bool
}

// capPermits reports whether s's capability name permits the request,
// using the values Prepare decoded when there are some.
func (s Subject) capPermits(name, kernel, gpu, uuid string) bool {
	ds, ok := s.decoded[name]
	if !ok {
		return capPermits(s.Caps[name], kernel, gpu, uuid)
	}
	if len(ds) == 0 {
		return true
	}
	for _, d := range ds {
		if d.ok && d.v.permits(kernel, gpu, uuid) {
			return true
		}
	}
	return false
}

// permits reports whether one decoded capability value permits the request.
func (v capValue) permits(kernel, gpu, uuid string) bool {
	if v.Kernels != nil && !listCoversKernel(*v.Kernels, kernel) {
		return false
	}
	return v.GPUs == nil || hostWide(kernel) || listCoversGPU(*v.GPUs, gpu, uuid)
}

// capPermits reports whether an app capability's values permit the request.
// No values: the capability is granted without restriction. Otherwise at
// least one value must permit it. A value that is not a JSON object, has
// fields gpumesh does not know or lists a wrong type permits nothing: an
// unknown restriction must not widen access.
func capPermits(values []json.RawMessage, kernel, gpu, uuid string) bool {
	if len(values) == 0 {
		return true
	}
	for _, raw := range values {
		if v, ok := decodeCapValue(raw); ok && v.permits(kernel, gpu, uuid) {
			return true
		}
	}
	return false
}

func decodeCapValue(raw json.RawMessage) (capValue, bool) {
	var v capValue
	t := bytes.TrimSpace(raw)
	if len(t) == 0 || t[0] != '{' {
		return v, false
	}
	dec := json.NewDecoder(bytes.NewReader(t))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil || dec.More() {
		return v, false
	}
	return v, true
}

func listCoversKernel(list []string, kernel string) bool {
	for _, k := range list {
		if k == kernel || k == "*" && isBuiltin(kernel) {
			return true
		}
	}
	return false
}

func listCoversGPU(list []string, gpu, uuid string) bool {
	for _, g := range list {
		if g == "*" || strings.EqualFold(g, gpu) || uuid != "" && strings.EqualFold(g, uuid) {
			return true
		}
	}
	return false
}

// EvaluateAny decides r once for each of kernels in turn (r.Kernel is
// replaced) and returns the first decision that allows, or else the first
// denial: what a right that any of several kernels grants needs, such as
// holding buffers, or the class of a caller's connection.
func (p *Policy) EvaluateAny(s Subject, r Request, kernels []string) Decision {
	var denied Decision
	for i, k := range kernels {
		r.Kernel = k
		d := p.Evaluate(s, r)
		if d.Allow {
			return d
		}
		if i == 0 {
			denied = d
		}
	}
	if len(kernels) == 0 {
		return p.Evaluate(s, r)
	}
	return denied
}

// Admits reports whether the policy gives s any right at all: some allow
// rule names s (for any kernel, right or GPU) and no deny block covering
// every kernel and every GPU names s. A server asks it once per connection,
// before reading any request, so that a peer the policy gives nothing is
// refused before it can hold memory or streams; each call is still decided
// by Evaluate. The decision's Rule and Reason say why; Limits and Class are
// those of the most specific allow rule naming s.
func (p *Policy) Admits(s Subject) Decision {
	if p == nil {
		return Decision{Reason: "no policy is in force (deny all)"}
	}
	if s.empty() {
		return Decision{Reason: "the caller has no identity (default deny)"}
	}
	var allow, deny entry
	consider := func(es []entry, denyOnly bool) {
		for _, e := range es {
			if denyOnly && !e.rule.deny {
				continue
			}
			if e.rule.deny {
				if e.rule.coversEverything() && (deny.rule == nil || better(e, deny)) {
					deny = e
				}
				continue
			}
			if e.cap != "" && !s.capGrantsAnything(e.cap) {
				continue
			}
			if allow.rule == nil || better(e, allow) {
				allow = e
			}
		}
	}
	s.forEachKey(p, consider)
	switch {
	case deny.rule != nil:
		return Decision{Rule: deny.rule.name, Reason: "deny " + quote(deny.rule.name) + " forbids " + deny.who() + " everything"}
	case allow.rule != nil:
		return Decision{
			Allow: true, Rule: allow.rule.name,
			Reason: "rule " + quote(allow.rule.name) + " grants " + allow.who() + " some rights",
			Limits: allow.rule.limits, Class: allow.rule.class,
		}
	case p.TrustsAgent(s):
		return p.agentAdmitted(s)
	}
	return Decision{Reason: "no rule names " + s.String() + " (default deny)"}
}

// forEachKey passes consider the index entries of every key s matches:
// its node or WireGuard peer, user, tags, capabilities and "*". For a pod:
// its service account, its namespace and "*", then (denyOnly: their
// denies alone count) those of the node it calls through.
func (s Subject) forEachKey(p *Policy, consider func(es []entry, denyOnly bool)) {
	nodeOnly := false
	if s.Pod != nil {
		sa, ns := s.Pod.keys()
		consider(p.idx.k8s[sa], false)
		consider(p.idx.k8s[ns], false)
		consider(p.idx.any, false)
		nodeOnly = true
	}
	if s.Node != "" {
		if s.WireGuard {
			consider(p.idx.wg[lower(s.Node)], nodeOnly)
		} else {
			consider(p.idx.nodes[lower(s.Node)], nodeOnly)
		}
	}
	if s.User != "" {
		consider(p.idx.users[lower(s.User)], nodeOnly)
	}
	for _, t := range s.Tags {
		consider(p.idx.tags[lower(t)], nodeOnly)
	}
	if len(p.idx.caps) > 0 {
		for c := range s.Caps {
			consider(p.idx.caps[c], nodeOnly)
		}
	}
	if !nodeOnly {
		consider(p.idx.any, false)
	}
}

// capGrantsAnything reports whether capability name has at least one value
// that could permit something: no values, or one that decodes.
func (s Subject) capGrantsAnything(name string) bool {
	if ds, ok := s.decoded[name]; ok {
		if len(ds) == 0 {
			return true
		}
		for _, d := range ds {
			if d.ok {
				return true
			}
		}
		return false
	}
	values := s.Caps[name]
	if len(values) == 0 {
		return true
	}
	for _, raw := range values {
		if _, ok := decodeCapValue(raw); ok {
			return true
		}
	}
	return false
}
