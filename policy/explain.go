package policy

import (
	"fmt"
	"strings"
)

// Explanation is a decision with the reasoning behind it: how each rule in
// the file related to the request.
type Explanation struct {
	Decision Decision `json:"decision"`
	Steps    []Step   `json:"steps"`
	// Caps are the app capabilities the caller holds now, of those the
	// policy names in cap: entries, with their values.
	Caps []HeldCap `json:"caps"`
}

// Step says how one rule related to the request.
type Step struct {
	Rule    string `json:"rule"`
	Deny    bool   `json:"deny,omitempty"`
	Pos     string `json:"pos,omitempty"`
	Via     string `json:"via,omitempty"`  // the subject entry through which the rule names the caller
	Kind    string `json:"kind,omitempty"` // that entry's kind, which sets its specificity
	Outcome string `json:"outcome"`
}

// Explain evaluates like Evaluate and also says, rule by rule, why each
// one did or did not decide. It walks every rule, so it is for people
// (`gpumesh policy explain`), not for the call path.
func (p *Policy) Explain(s Subject, r Request) Explanation {
	ex := Explanation{Decision: p.Evaluate(s, r), Steps: []Step{}, Caps: []HeldCap{}}
	gpu, uuid, ok := r.canonicalGPU()
	if p == nil || s.empty() || !ok {
		return ex
	}
	ex.Caps = append(ex.Caps, p.heldCaps(s)...)
	groups := map[string]*group{}
	for i := range p.groups {
		groups[p.groups[i].name] = &p.groups[i]
	}
	for _, rl := range p.rules {
		st := Step{Rule: rl.name, Deny: rl.deny, Pos: Pos(rl.rng)}
		via, k, capName, ok := bestRef(rl, s, groups)
		switch {
		case !ok:
			st.Outcome = "does not name " + s.String()
			if agent := s.agent(); s.Pod != nil && !rl.deny {
				if _, _, _, named := bestRef(rl, agent, groups); named {
					st.Outcome += " (it names " + agent.String() + ", the agent the pod calls through: an allow rule naming an agent grants its pods nothing)"
				}
			}
			if c := capsNotHeld(rl, s, groups); c != "" {
				st.Outcome += " (it grants through " + c + ", which " + s.String() + " does not hold now)"
			}
		case ex.Decision.Rule == rl.name:
			st.Via, st.Kind = via, k.String()
			st.Outcome = "decides: " + ex.Decision.Reason
		case !coversKernel(rl.allKernels, rl.allBuiltins, rl.kernels, r.Kernel):
			st.Via, st.Kind = via, k.String()
			st.Outcome = fmt.Sprintf("names %s but not kernel %s", s.String(), clip(r.Kernel))
			if isCustom(r.Kernel) && rl.allBuiltins {
				st.Outcome += ` ("*" covers built-ins only; custom code is granted by name)`
			}
		case !rl.coversGPU(r.Kernel, gpu, uuid):
			st.Via, st.Kind = via, k.String()
			st.Outcome = fmt.Sprintf("names %s but not gpu %s", s.String(), gpu)
		case !rl.deny && capName != "" && !s.capPermits(capName, r.Kernel, gpu, uuid):
			st.Via, st.Kind = via, k.String()
			st.Outcome = fmt.Sprintf("matches through capability %q, whose values do not permit %s on gpu %s", capName, clip(r.Kernel), gpu)
		case rl.deny:
			st.Via, st.Kind = via, k.String()
			st.Outcome = "matches; another deny decided"
		case !ex.Decision.Allow:
			st.Via, st.Kind = via, k.String()
			st.Outcome = fmt.Sprintf("matches, but deny %q overrides every allow", ex.Decision.Rule)
		default:
			st.Via, st.Kind = via, k.String()
			st.Outcome = fmt.Sprintf("matches, but rule %q is more specific or written earlier", ex.Decision.Rule)
		}
		ex.Steps = append(ex.Steps, st)
	}
	return ex
}

// bestRef finds the most specific subject entry of rl that names s,
// preferring entries whose capability (if any) permits nothing less.
func bestRef(rl *rule, s Subject, groups map[string]*group) (via string, k kind, capName string, ok bool) {
	best := -1
	for _, ref := range rl.subjects {
		refs := []subjectRef{ref}
		if ref.kind == kindGroup {
			if g := groups[ref.name]; g != nil {
				refs = g.members
			} else {
				refs = nil
			}
		}
		for _, m := range refs {
			if !refNames(m, s, rl.deny) {
				continue
			}
			if spec := ref.kind.specificity(); spec > best {
				best, via, k, ok = spec, ref.text, ref.kind, true
				capName = ""
				if m.kind == kindCap {
					capName = m.name
				}
			}
		}
	}
	return via, k, capName, ok
}

// refNames reports whether a non-group subject entry of an allow rule or
// (deny) a deny block names s. A pod is named by k8s: entries and "*", and,
// in a deny, by the entries naming the node it calls through.
func refNames(ref subjectRef, s Subject, deny bool) bool {
	switch ref.kind {
	case kindAny:
		return true
	case kindK8sNS, kindK8sSA:
		if s.Pod == nil {
			return false
		}
		sa, ns := s.Pod.keys()
		return ref.name == sa || ref.name == ns
	}
	if s.Pod != nil && !deny {
		return false
	}
	switch ref.kind {
	case kindNode:
		return !s.WireGuard && s.Node != "" && lower(s.Node) == ref.name
	case kindWG:
		return s.WireGuard && s.Node != "" && lower(s.Node) == ref.name
	case kindUser:
		return s.User != "" && lower(s.User) == ref.name
	case kindTag:
		for _, t := range s.Tags {
			if lower(t) == ref.name {
				return true
			}
		}
	case kindCap:
		_, has := s.Caps[ref.name]
		return has
	}
	return false
}

// capsNotHeld lists the cap: entries of rl (groups expanded) whose
// capability s does not hold, "" when there are none.
func capsNotHeld(rl *rule, s Subject, groups map[string]*group) string {
	var out []string
	for _, ref := range rl.subjects {
		refs := []subjectRef{ref}
		if g := groups[ref.name]; ref.kind == kindGroup && g != nil {
			refs = g.members
		}
		for _, m := range refs {
			if _, held := s.Caps[m.name]; m.kind == kindCap && !held {
				out = append(out, "cap:"+m.name)
			}
		}
	}
	return strings.Join(out, ", ")
}
