package policy

import (
	"slices"

	"github.com/gpumesh/gpumesh/dscp"
)

// DefaultClass is the QoS class of callers whose allow rule names none. A
// policy may declare it itself; otherwise ScheduledClasses adds it, marked
// AF41, below every declared class.
const DefaultClass = "default"

// ClassOf is the QoS class a caller's traffic goes in, and that class's
// DSCP: the class of the allow rule that lets s run a built-in kernel
// (classes belong to rules, not to kernels), else DefaultClass. A caller
// no rule allows is in DefaultClass too.
func (p *Policy) ClassOf(s Subject) (string, dscp.Code) {
	d := p.EvaluateAny(s, Request{}, BuiltinKernels())
	if c, ok := p.Class(d.Class); ok && d.Allow {
		return c.Name, c.DSCP
	}
	if c, ok := p.Class(DefaultClass); ok {
		return DefaultClass, c.DSCP
	}
	return DefaultClass, dscp.AF41 // as ScheduledClasses adds it
}

// ScheduledClasses are the classes a host schedules and shapes: the
// policy's own, in order, and DefaultClass unless the policy declares it.
func (p *Policy) ScheduledClasses() []Class {
	out := p.Classes()
	if slices.ContainsFunc(out, func(c Class) bool { return c.Name == DefaultClass }) {
		return out
	}
	lowest := 0
	for _, c := range out {
		lowest = max(lowest, c.Priority)
	}
	return append(out, Class{Name: DefaultClass, DSCP: dscp.AF41, Priority: lowest + 1})
}
