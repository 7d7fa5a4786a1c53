package policy

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"
)

// Summary is the compiled meaning of a policy, without source positions or
// file name: two files that mean the same thing (an HCL file and its JSON
// twin) have equal summaries. It is also what `gpumesh policy check --json`
// prints.
type Summary struct {
	Version int            `json:"version"`
	Groups  []GroupSummary `json:"groups"`
	Classes []Class        `json:"classes"`
	Rules   []RuleSummary  `json:"rules"`
	Denies  []RuleSummary  `json:"denies"`
	Tests   []TestSummary  `json:"tests"`
	// TrustedAgents is the kubernetes block's trusted_agents.
	TrustedAgents []string `json:"trusted_agents,omitempty"`
}

// GroupSummary is a group and its members, canonically written.
type GroupSummary struct {
	Name    string   `json:"name"`
	Members []string `json:"members"`
}

// RuleSummary is a compiled rule or deny block.
type RuleSummary struct {
	Name     string        `json:"name"`
	Subjects []string      `json:"subjects"`
	GPUs     []string      `json:"gpus"`
	Kernels  []string      `json:"kernels"`
	Limits   LimitsSummary `json:"limits"`
	Class    string        `json:"class,omitempty"`
}

// LimitsSummary is Limits with JSON names; zero means unlimited or the
// server's default.
type LimitsSummary struct {
	MaxMemory       int64   `json:"max_memory,omitempty"`
	MaxConcurrent   int     `json:"max_concurrent,omitempty"`
	Rate            float64 `json:"rate,omitempty"`
	Burst           int     `json:"burst,omitempty"`
	MaxRequestBytes int64   `json:"max_request,omitempty"`
	IdleTimeout     string  `json:"idle_timeout,omitempty"`
}

// Summary returns the limits with JSON names.
func (l Limits) Summary() LimitsSummary {
	s := LimitsSummary{
		MaxMemory: l.MaxMemory, MaxConcurrent: l.MaxConcurrent, Rate: l.Rate, Burst: l.Burst,
		MaxRequestBytes: l.MaxRequestBytes,
	}
	if l.IdleTimeout > 0 {
		s.IdleTimeout = FormatDuration(l.IdleTimeout)
	}
	return s
}

// String renders the limits for people: "max_memory 2GiB, rate 50/s
// (burst 10)", or "unlimited".
func (l Limits) String() string {
	var parts []string
	if l.MaxMemory > 0 {
		parts = append(parts, "max_memory "+FormatSize(l.MaxMemory))
	}
	if l.MaxConcurrent > 0 {
		parts = append(parts, fmt.Sprintf("max_concurrent %d", l.MaxConcurrent))
	}
	if l.Rate > 0 {
		parts = append(parts, fmt.Sprintf("rate %g/s (burst %d)", l.Rate, l.Burst))
	}
	if l.MaxRequestBytes > 0 {
		parts = append(parts, "max_request "+FormatSize(l.MaxRequestBytes))
	}
	if l.IdleTimeout > 0 {
		parts = append(parts, "idle_timeout "+FormatDuration(l.IdleTimeout))
	}
	if len(parts) == 0 {
		return "unlimited"
	}
	return strings.Join(parts, ", ")
}

// FormatDuration is time.Duration.String without zero trailing units:
// "10m", "1h30m", "90s".
func FormatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// TestSummary is one test block.
type TestSummary struct {
	Name    string                       `json:"name"`
	Node    string                       `json:"node,omitempty"`
	User    string                       `json:"user,omitempty"`
	Tags    []string                     `json:"tags,omitempty"`
	Caps    map[string][]json.RawMessage `json:"caps,omitempty"`
	WG      bool                         `json:"wireguard,omitempty"`
	K8s     string                       `json:"k8s,omitempty"`
	Pod     string                       `json:"pod,omitempty"`
	Kernel  string                       `json:"kernel"`
	GPU     string                       `json:"gpu,omitempty"`
	GPUUUID string                       `json:"gpu_uuid,omitempty"`
	Bytes   int64                        `json:"bytes,omitempty"`
	Expect  string                       `json:"expect"`
	Rule    *string                      `json:"rule,omitempty"`
	Class   *string                      `json:"class,omitempty"`
}

// Summary describes the compiled policy.
func (p *Policy) Summary() Summary {
	s := Summary{Groups: []GroupSummary{}, Classes: []Class{}, Rules: []RuleSummary{}, Denies: []RuleSummary{}, Tests: []TestSummary{}}
	if p == nil {
		return s
	}
	s.Version = p.version
	s.TrustedAgents = p.TrustedAgents()
	for _, g := range p.groups {
		gs := GroupSummary{Name: g.name, Members: []string{}}
		for _, m := range g.members {
			gs.Members = append(gs.Members, m.canonical())
		}
		s.Groups = append(s.Groups, gs)
	}
	s.Classes = append(s.Classes, p.classes...)
	for _, r := range p.rules {
		rs := RuleSummary{Name: r.name, Subjects: []string{}, Class: r.class}
		for _, ref := range r.subjects {
			rs.Subjects = append(rs.Subjects, ref.canonical())
		}
		rs.GPUs = r.gpuList()
		rs.Kernels = r.kernelList()
		rs.Limits = r.limits.Summary()
		if r.deny {
			s.Denies = append(s.Denies, rs)
		} else {
			s.Rules = append(s.Rules, rs)
		}
	}
	for _, t := range p.tests {
		ts := TestSummary{
			Name: t.name, Node: t.subject.Node, User: t.subject.User, Tags: t.subject.Tags,
			Caps: t.subject.Caps, WG: t.subject.WireGuard,
			Kernel: t.req.Kernel, GPU: t.req.GPU, GPUUUID: t.req.GPUUUID, Bytes: t.req.Bytes,
			Expect: verdict(t.expect),
		}
		if pod := t.subject.Pod; pod != nil {
			ts.K8s, ts.Pod = pod.Namespace+"/"+pod.ServiceAccount, pod.Name
		}
		if t.hasRule {
			ts.Rule = &t.rule
		}
		if t.hasClass {
			ts.Class = &t.class
		}
		s.Tests = append(s.Tests, ts)
	}
	return s
}

// canonical writes a subject with its kind made explicit where it was
// implied: "laptop" → "node:laptop", "alice@example.com" → "user:…".
func (r subjectRef) canonical() string {
	switch r.kind {
	case kindAny:
		return "*"
	case kindCap:
		return "cap:" + r.name
	case kindTag:
		return r.name
	}
	return r.kind.String() + ":" + r.name
}

func (r *rule) gpuList() []string {
	if r.allGPUs {
		return []string{"*"}
	}
	return slices.Sorted(maps.Keys(r.gpus))
}

func (r *rule) kernelList() []string {
	if r.allKernels {
		return []string{"*", KernelCustomCUDA, KernelCustomPTX, RightMetrics}
	}
	var out []string
	if r.allBuiltins {
		out = append(out, "*")
	}
	names := slices.Collect(maps.Keys(r.kernels))
	sort.Slice(names, func(i, j int) bool {
		// built-ins first, then custom rights
		ci, cj := strings.HasPrefix(names[i], "custom:"), strings.HasPrefix(names[j], "custom:")
		if ci != cj {
			return cj
		}
		return names[i] < names[j]
	})
	return append(out, names...)
}
