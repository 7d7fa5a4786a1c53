package policy

import (
	"fmt"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// sensitiveRights lists what allow rule r grants that should not follow a
// reusable node name: custom code, observe:metrics, and resident buffers
// (which any built-in or custom kernel brings).
func sensitiveRights(r *rule) []string {
	var out []string
	for _, k := range []string{KernelCustomPTX, KernelCustomCUDA, RightMetrics} {
		if r.kernels[k] {
			out = append(out, k)
		}
	}
	buffers := r.allBuiltins
	for k := range r.kernels {
		buffers = buffers || k != RightMetrics
	}
	if buffers {
		out = append(out, "resident buffers")
	}
	return out
}

// warnNodeNames warns when allow rule r grants sensitive rights to callers
// it names by node name (directly or through a group): a node name is
// whatever device holds it now. ranges are those of r.subjects.
func (c *compiler) warnNodeNames(r *rule, ranges []hcl.Range) {
	rights := sensitiveRights(r)
	if len(rights) == 0 {
		return
	}
	for i, ref := range r.subjects {
		var nodes []string
		switch ref.kind {
		case kindNode:
			nodes = append(nodes, ref.text)
		case kindGroup:
			for _, g := range c.p.groups {
				if g.name != ref.name {
					continue
				}
				for _, m := range g.members {
					if m.kind == kindNode {
						nodes = append(nodes, m.text+" (in "+ref.text+")")
					}
				}
			}
		}
		if len(nodes) == 0 {
			continue
		}
		rng := ranges[i]
		c.p.warnings = append(c.p.warnings, &hcl.Diagnostic{
			Severity: hcl.DiagWarning,
			Summary:  "Rights granted by node name",
			Detail: fmt.Sprintf("Rule %q grants %s to %s by node name alone. A node name follows whichever device holds it: "+
				"when a node is deleted or expires, another device can join under the freed name and get these rights. "+
				"Name such callers by tag, user or cap: instead.",
				r.name, strings.Join(rights, ", "), strings.Join(nodes, ", ")),
			Subject: &rng,
		})
	}
}
