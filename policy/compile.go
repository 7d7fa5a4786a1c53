package policy

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"

	"github.com/gpumesh/gpumesh/dscp"
)

var fileSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "version"}},
	Blocks: []hcl.BlockHeaderSchema{
		{Type: "group", LabelNames: []string{"name"}},
		{Type: "class", LabelNames: []string{"name"}},
		{Type: "rule", LabelNames: []string{"name"}},
		{Type: "deny", LabelNames: []string{"name"}},
		{Type: "test", LabelNames: []string{"name"}},
		{Type: "kubernetes"},
	},
}

var groupSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "members"}}}

var classSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{
	{Name: "dscp"}, {Name: "priority"}, {Name: "rate"}, {Name: "burst"},
}}

var ruleSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{
	{Name: "subjects"}, {Name: "gpus"}, {Name: "kernels"},
	{Name: "max_memory"}, {Name: "max_concurrent"}, {Name: "rate"}, {Name: "burst"},
	{Name: "max_request"}, {Name: "idle_timeout"}, {Name: "class"},
}}

var denySchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{
	{Name: "subjects"}, {Name: "gpus"}, {Name: "kernels"},
}}

var testSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{
	{Name: "subject"}, {Name: "kernel"}, {Name: "gpu"}, {Name: "gpu_uuid"}, {Name: "bytes"},
	{Name: "expect"}, {Name: "rule"}, {Name: "class"},
}}

// compiler turns a parsed body into a Policy, collecting diagnostics.
type compiler struct {
	p     *Policy
	diags hcl.Diagnostics

	groups  map[string]hcl.Range
	classes map[string]hcl.Range
	rules   map[string]hcl.Range // rule and deny names share one namespace
	tests   map[string]hcl.Range
}

func (c *compiler) errorf(rng hcl.Range, summary, format string, args ...any) {
	r := rng
	c.diags = append(c.diags, &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  summary,
		Detail:   fmt.Sprintf(format, args...),
		Subject:  &r,
	})
}

func (c *compiler) compile(body hcl.Body) {
	content, d := body.Content(fileSchema)
	c.diags = append(c.diags, d...)

	a := content.Attributes["version"]
	if a == nil {
		if !d.HasErrors() {
			start := hcl.Range{Filename: c.p.source, Start: hcl.InitialPos, End: hcl.InitialPos}
			c.errorf(start, "Missing version",
				"A policy file must say which language version it is written in: add version = %d at the top.", LanguageVersion)
		}
		return
	}
	v, ok := c.int(a, 0, 1<<20)
	if !ok {
		return
	}
	if v != LanguageVersion {
		c.errorf(a.Expr.Range(), "Unsupported version",
			"This gpumesh reads policy language version %d; the file says version = %d.", LanguageVersion, v)
		return
	}
	c.p.version = v

	byType := map[string][]*hcl.Block{}
	for _, b := range content.Blocks {
		byType[b.Type] = append(byType[b.Type], b)
	}
	// Groups and classes first, so that rules may refer to ones defined
	// further down the file.
	c.groups = map[string]hcl.Range{}
	for _, b := range byType["group"] {
		c.group(b)
	}
	c.classes = map[string]hcl.Range{}
	for _, b := range byType["class"] {
		c.class(b)
	}
	c.kubernetes(byType["kubernetes"])
	c.rules = map[string]hcl.Range{}
	for _, b := range byType["rule"] {
		c.rule(b, false)
	}
	for _, b := range byType["deny"] {
		c.rule(b, true)
	}
	c.warnAgentRules()
	c.tests = map[string]hcl.Range{}
	for _, b := range byType["test"] {
		c.test(b)
	}
}

// content decodes a block against its schema. Required arguments are
// checked here rather than by HCL so that a typo'd key yields exactly one
// diagnostic ("Unsupported argument …; did you mean …?") instead of a
// second one saying the real key is missing.
func (c *compiler) content(b *hcl.Block, schema *hcl.BodySchema, required ...string) map[string]*hcl.Attribute {
	ct, d := b.Body.Content(schema)
	c.diags = append(c.diags, d...)
	if d.HasErrors() {
		return ct.Attributes
	}
	for _, name := range required {
		if ct.Attributes[name] == nil {
			c.errorf(b.DefRange, "Missing required argument",
				"The %s block %q needs a %q argument.", b.Type, b.Labels[0], name)
		}
	}
	return ct.Attributes
}

// define records a block name in ns, or reports a duplicate.
func (c *compiler) define(ns map[string]hcl.Range, b *hcl.Block, what string) bool {
	name := b.Labels[0]
	if prev, dup := ns[name]; dup {
		c.errorf(b.LabelRanges[0], "Duplicate "+what+" name",
			"A %s named %q is already defined at %s; %s names must be unique.", what, name, Pos(prev), what)
		return false
	}
	ns[name] = b.DefRange
	return true
}

func (c *compiler) group(b *hcl.Block) {
	name := b.Labels[0]
	attrs := c.content(b, groupSchema, "members")
	if !validName(name) {
		c.errorf(b.LabelRanges[0], "Invalid group name",
			"Group name %q: use letters, digits, '-', '_' and '.'.", name)
		return
	}
	if !c.define(c.groups, b, "group") {
		return
	}
	g := group{name: lower(name)}
	if a := attrs["members"]; a != nil {
		elems, _ := c.strList(a)
		for _, e := range elems {
			ref, err := parseSubject(e.s)
			switch {
			case err != nil:
				c.errorf(e.rng, "Invalid group member", "%s", sentence(err.Error()))
				continue
			case ref.kind == kindGroup:
				c.errorf(e.rng, "Invalid group member", "Groups cannot contain groups (%q); list its members instead.", e.s)
				continue
			case ref.kind == kindAny:
				c.errorf(e.rng, "Invalid group member", `A group cannot contain "*"; name "*" in the rule instead.`)
				continue
			}
			g.members = append(g.members, ref)
		}
	}
	c.p.groups = append(c.p.groups, g)
}

func (c *compiler) class(b *hcl.Block) {
	name := b.Labels[0]
	attrs := c.content(b, classSchema, "dscp")
	if !validName(name) {
		c.errorf(b.LabelRanges[0], "Invalid class name",
			"Class name %q: use letters, digits, '-', '_' and '.'.", name)
		return
	}
	if !c.define(c.classes, b, "class") {
		return
	}
	cl := Class{Name: name}
	if a := attrs["dscp"]; a != nil {
		if v, ok := c.value(a); ok {
			var s string
			switch v.Type() {
			case cty.String:
				s = v.AsString()
			case cty.Number:
				var ok bool
				if s, ok = intText(v); !ok {
					c.errorf(a.Expr.Range(), "Invalid DSCP", "A DSCP number is a whole number 0-63.")
				}
			default:
				c.typeError(a, `a DSCP name such as "EF" or "AF41", or a number 0-63`)
			}
			if s != "" {
				d, err := dscp.Parse(s)
				if err != nil {
					c.errorf(a.Expr.Range(), "Invalid DSCP", "%s", sentence(err.Error()))
				}
				cl.DSCP = d
			}
		}
	}
	if a := attrs["priority"]; a != nil {
		cl.Priority, _ = c.int(a, 0, 7)
	}
	if a := attrs["rate"]; a != nil {
		cl.Rate, _ = c.quantity(a, "rate", ParseRate)
	}
	if a := attrs["burst"]; a != nil {
		cl.Burst, _ = c.quantity(a, "size", ParseSize)
		if attrs["rate"] == nil {
			c.errorf(a.NameRange, "Burst without rate", "A class's burst only means something with a rate; add rate or remove burst.")
		}
	}
	c.p.classes = append(c.p.classes, cl)
}

func (c *compiler) rule(b *hcl.Block, deny bool) {
	name := b.Labels[0]
	var attrs map[string]*hcl.Attribute
	if deny {
		attrs = c.content(b, denySchema, "subjects")
	} else {
		attrs = c.content(b, ruleSchema, "subjects", "gpus", "kernels")
	}
	if strings.TrimSpace(name) == "" {
		c.errorf(b.LabelRanges[0], "Invalid rule name", "A rule needs a non-empty name.")
		return
	}
	if !c.define(c.rules, b, "rule") {
		return
	}
	r := &rule{name: name, deny: deny, rng: b.DefRange}
	for _, x := range c.p.rules {
		if x.deny == deny {
			r.order++
		}
	}
	var subjectRanges []hcl.Range // parallel to r.subjects, for warnings
	if a := attrs["subjects"]; a != nil {
		elems, listOK := c.strList(a)
		for _, e := range elems {
			ref, err := parseSubject(e.s)
			if err != nil {
				c.errorf(e.rng, "Invalid subject", "%s", sentence(err.Error()))
				continue
			}
			if ref.kind == kindGroup {
				if _, ok := c.groups[ref.name]; !ok {
					msg := fmt.Sprintf("No group %q is defined in this file", ref.name)
					if s := suggest(ref.name, keys(c.groups)); s != "" {
						msg += fmt.Sprintf("; did you mean %q?", "group:"+s)
					} else {
						msg += "."
					}
					c.errorf(e.rng, "Unknown group", "%s", msg)
					continue
				}
			}
			r.subjects = append(r.subjects, ref)
			subjectRanges = append(subjectRanges, e.rng)
		}
		if len(elems) == 0 && listOK {
			c.errorf(a.Expr.Range(), "Empty subjects", "A rule must name at least one subject.")
		}
	}
	if a := attrs["gpus"]; a != nil {
		r.gpus = map[string]bool{}
		elems, listOK := c.strList(a)
		for _, e := range elems {
			switch id, err := parseGPU(e.s); {
			case err != nil:
				c.errorf(e.rng, "Invalid GPU", "%s", sentence(err.Error()))
			case id == "*":
				r.allGPUs = true
			default:
				r.gpus[id] = true
			}
		}
		if len(elems) == 0 && listOK {
			c.errorf(a.Expr.Range(), "Empty gpus", `List at least one GPU, or "*" for all of them.`)
		}
	} else if deny {
		r.allGPUs = true
	}
	if a := attrs["kernels"]; a != nil {
		r.kernels = map[string]bool{}
		elems, listOK := c.strList(a)
		for _, e := range elems {
			switch k := e.s; {
			case k == "*" && deny:
				// A deny's "*" is everything a caller could get:
				// built-ins, custom code, observe:metrics, and so
				// resident buffers, which follow from any kernel.
				r.allKernels = true
			case k == "*":
				r.allBuiltins = true
			case k == KernelCustomPTX || k == KernelCustomCUDA || k == RightMetrics:
				r.kernels[k] = true
			case isCustom(k):
				c.errorf(e.rng, "Unknown kernel", "%q: custom code rights are %q and %q, each granted by name.", k, KernelCustomPTX, KernelCustomCUDA)
			case isBuiltin(k):
				r.kernels[k] = true
			default:
				msg := fmt.Sprintf("%q is not a built-in kernel (built-ins: %s)", k, strings.Join(BuiltinKernels(), ", "))
				if s := suggest(k, BuiltinKernels()); s != "" {
					msg += fmt.Sprintf("; did you mean %q?", s)
				} else {
					msg += "."
				}
				c.errorf(e.rng, "Unknown kernel", "%s", msg)
			}
		}
		if len(elems) == 0 && listOK {
			c.errorf(a.Expr.Range(), "Empty kernels", `List at least one kernel, or "*" for every built-in.`)
		}
	} else if deny {
		r.allKernels = true
	}
	if !deny {
		c.limits(r, attrs)
		c.warnNodeNames(r, subjectRanges)
	}
	c.p.rules = append(c.p.rules, r)
}

func (c *compiler) limits(r *rule, attrs map[string]*hcl.Attribute) {
	l := &r.limits
	if a := attrs["max_memory"]; a != nil {
		l.MaxMemory, _ = c.quantity(a, "size", ParseSize)
	}
	if a := attrs["max_concurrent"]; a != nil {
		l.MaxConcurrent, _ = c.int(a, 0, 1<<20)
	}
	if a := attrs["rate"]; a != nil {
		l.Rate, _ = c.float(a)
	}
	if a := attrs["burst"]; a != nil {
		l.Burst, _ = c.int(a, 1, 1<<20)
		if attrs["rate"] == nil {
			c.errorf(a.NameRange, "Burst without rate", "burst is the size of the rate's token bucket; add rate (calls per second) or remove burst.")
		}
	} else if l.Rate > 0 {
		l.Burst = max(1, int(l.Rate+0.999999))
	}
	if a := attrs["max_request"]; a != nil {
		l.MaxRequestBytes, _ = c.quantity(a, "size", ParseSize)
	}
	if a := attrs["idle_timeout"]; a != nil {
		if s, ok := c.str(a); ok {
			d, err := time.ParseDuration(s)
			switch {
			case err != nil:
				c.errorf(a.Expr.Range(), "Invalid duration", "idle_timeout %q: want a duration such as \"90s\", \"10m\" or \"1h\".", s)
			case d <= 0:
				c.errorf(a.Expr.Range(), "Invalid duration", "idle_timeout must be positive; leave it out for the server's default.")
			default:
				l.IdleTimeout = d
			}
		}
	}
	if a := attrs["class"]; a != nil {
		if s, ok := c.str(a); ok {
			if c.knownClass(a, s) {
				r.class = s
			}
		}
	}
}

func (c *compiler) knownClass(a *hcl.Attribute, name string) bool {
	if _, ok := c.classes[name]; ok {
		return true
	}
	msg := fmt.Sprintf("No class %q is defined in this file", name)
	if s := suggest(name, keys(c.classes)); s != "" {
		msg += fmt.Sprintf("; did you mean %q?", s)
	} else {
		msg += "."
	}
	c.errorf(a.Expr.Range(), "Unknown class", "%s", msg)
	return false
}

func keys(m map[string]hcl.Range) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
