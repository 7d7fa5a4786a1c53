package policy

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
)

// HeldCap is an app capability the caller holds now, with its values as
// the tailnet sent them.
type HeldCap struct {
	Name   string            `json:"name"`
	Values []json.RawMessage `json:"values"`
}

// Limits on what an explanation repeats of a caller's capabilities: they
// come from the tailnet's policy, not from this file, and can be long.
const (
	maxHeldCaps    = 8   // capabilities listed
	maxHeldValues  = 4   // values listed per capability
	maxHeldValueSz = 200 // bytes of each value's JSON
)

// heldCaps returns the capabilities s holds now that p names in a cap:
// entry, sorted by name; at most maxHeldCaps.
func (p *Policy) heldCaps(s Subject) []HeldCap {
	var out []HeldCap
	for name, values := range s.Caps {
		if _, named := p.idx.caps[name]; named {
			out = append(out, HeldCap{Name: name, Values: slices.Clone(values)})
		}
	}
	slices.SortFunc(out, func(a, b HeldCap) int { return strings.Compare(a.Name, b.Name) })
	if len(out) > maxHeldCaps {
		out = out[:maxHeldCaps]
	}
	return out
}

// namedCaps returns the capability names p's cap: entries use, sorted.
func (p *Policy) namedCaps() []string {
	names := make([]string, 0, len(p.idx.caps))
	for name := range p.idx.caps {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// ExplainDecision decides like Evaluate and, when it denies and the policy
// grants anything through app capabilities, adds to the reason which of
// those capabilities the caller holds now, with their values, or that it
// holds none of them. A caller whose grant was just revoked in the
// tailnet's policy, or narrowed by a capability value, learns why. It is
// what a server's Explain answers; the call path uses Evaluate, whose
// reasons stay short.
func (p *Policy) ExplainDecision(s Subject, r Request) Decision {
	d := p.Evaluate(s, r)
	if d.Allow || p == nil || s.empty() || len(p.idx.caps) == 0 {
		return d
	}
	d.Reason += "; " + p.heldText(s)
	return d
}

// heldText says which of the capabilities p names s holds now.
func (p *Policy) heldText(s Subject) string {
	held := p.heldCaps(s)
	if len(held) == 0 {
		names := p.namedCaps()
		if len(names) > maxHeldCaps {
			names = names[:maxHeldCaps]
		}
		return s.String() + " holds none of the capabilities this policy grants through (" + strings.Join(names, ", ") + ")"
	}
	var b strings.Builder
	b.WriteString(s.String())
	b.WriteString(" holds ")
	for i, h := range held {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(h.Name)
		if len(h.Values) == 0 {
			b.WriteString(" (no values: not narrowed)")
			continue
		}
		b.WriteString(" = [")
		for j, v := range h.Values {
			if j == maxHeldValues {
				b.WriteString(", …")
				break
			}
			if j > 0 {
				b.WriteString(", ")
			}
			b.WriteString(compactValue(v))
		}
		b.WriteString("]")
	}
	return b.String()
}

// compactValue renders one capability value as compact JSON (or, if it
// is not JSON, quoted), cut to maxHeldValueSz bytes.
func compactValue(v json.RawMessage) string {
	var b bytes.Buffer
	if err := json.Compact(&b, v); err != nil {
		return clip(string(v))
	}
	s := b.String()
	if len(s) > maxHeldValueSz {
		s = s[:maxHeldValueSz] + "…"
	}
	return s
}
