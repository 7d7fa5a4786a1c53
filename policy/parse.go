package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	hcljson "github.com/hashicorp/hcl/v2/json"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
	ctyjson "github.com/zclconf/go-cty/cty/json"

	"github.com/gpumesh/gpumesh/dscp"
)

// LanguageVersion is the policy language version this package reads.
const LanguageVersion = 1

// ParseError is returned when a policy file is malformed. Every diagnostic
// names file:line:col.
type ParseError struct {
	Diags hcl.Diagnostics
	Files map[string]*hcl.File // the parsed sources, for WriteText's snippets
}

// Error lists the diagnostics, one "file:line:col: summary: detail" a line.
func (e *ParseError) Error() string {
	var b strings.Builder
	for i, d := range e.Diags {
		if i > 0 {
			b.WriteString("\n")
		}
		b.WriteString("policy: ")
		b.WriteString(formatDiag(d))
	}
	return b.String()
}

// Unwrap gives errors.As access to the hcl.Diagnostics.
func (e *ParseError) Unwrap() error { return e.Diags }

// WriteText writes the diagnostics for a person, with the offending source
// lines, wrapped at width columns (0: no wrapping).
func (e *ParseError) WriteText(w io.Writer, width uint, color bool) error {
	return hcl.NewDiagnosticTextWriter(w, e.Files, width, color).WriteDiagnostics(e.Diags)
}

// Pos is a position in a policy file, "file:line:col".
func Pos(r hcl.Range) string {
	if r.Filename == "" && r.Start.Line == 0 {
		return ""
	}
	return fmt.Sprintf("%s:%d:%d", r.Filename, r.Start.Line, r.Start.Column)
}

func formatDiag(d *hcl.Diagnostic) string {
	var b strings.Builder
	if d.Subject != nil {
		b.WriteString(Pos(*d.Subject))
		b.WriteString(": ")
	}
	b.WriteString(d.Summary)
	if d.Detail != "" {
		b.WriteString(": ")
		b.WriteString(d.Detail)
	}
	return b.String()
}

// ParseFile reads and compiles the policy at path; the syntax (.hcl or
// .json) follows the extension. It does not run the file's tests: see
// LoadChecked.
func ParseFile(path string) (*Policy, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("policy: read %s: %w", path, err)
	}
	return Parse(path, src)
}

// Parse compiles a policy from src; filename names it in diagnostics and
// chooses the syntax by its extension (.hcl or .json).
func Parse(filename string, src []byte) (*Policy, error) {
	var (
		file  *hcl.File
		diags hcl.Diagnostics
	)
	switch strings.ToLower(filepath.Ext(filename)) {
	case ".hcl":
		file, diags = hclsyntax.ParseConfig(src, filename, hcl.InitialPos)
	case ".json":
		file, diags = hcljson.Parse(src, filename)
	default:
		return nil, fmt.Errorf("policy: %s: unknown syntax: want a .hcl or .json file", filename)
	}
	files := map[string]*hcl.File{}
	if file != nil {
		files[filename] = file
	}
	if diags.HasErrors() {
		return nil, &ParseError{Diags: syntaxErrors(diags), Files: files}
	}
	c := &compiler{p: &Policy{source: filename}}
	c.compile(file.Body)
	if c.diags.HasErrors() {
		ds := errorsOnly(c.diags)
		sort.SliceStable(ds, func(i, j int) bool { return before(ds[i].Subject, ds[j].Subject) })
		return nil, &ParseError{Diags: ds, Files: files}
	}
	sum := sha256.Sum256(src)
	c.p.digest = "sha256:" + hex.EncodeToString(sum[:8])
	c.p.idx = buildIndex(c.p)
	return c.p, nil
}

// syntaxErrors drops the JSON parser's "Root value must be object", which
// only follows from an earlier syntax error when there is one.
func syntaxErrors(ds hcl.Diagnostics) hcl.Diagnostics {
	ds = errorsOnly(ds)
	if len(ds) < 2 {
		return ds
	}
	var out hcl.Diagnostics
	for _, d := range ds {
		if d.Summary != "Root value must be object" {
			out = append(out, d)
		}
	}
	if len(out) == 0 {
		return ds
	}
	return out
}

// before orders diagnostics by position in the file.
func before(a, b *hcl.Range) bool {
	if a == nil || b == nil {
		return a != nil
	}
	if a.Start.Line != b.Start.Line {
		return a.Start.Line < b.Start.Line
	}
	return a.Start.Column < b.Start.Column
}

// sentence ends s with a full stop unless it already ends a sentence.
func sentence(s string) string {
	if strings.HasSuffix(s, ".") || strings.HasSuffix(s, "?") {
		return s
	}
	return s + "."
}

func errorsOnly(ds hcl.Diagnostics) hcl.Diagnostics {
	var out hcl.Diagnostics
	for _, d := range ds {
		if d.Severity == hcl.DiagError {
			out = append(out, d)
		}
	}
	return out
}

var fileSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "version"}},
	Blocks: []hcl.BlockHeaderSchema{
		{Type: "group", LabelNames: []string{"name"}},
		{Type: "class", LabelNames: []string{"name"}},
		{Type: "rule", LabelNames: []string{"name"}},
		{Type: "deny", LabelNames: []string{"name"}},
		{Type: "test", LabelNames: []string{"name"}},
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
	c.rules = map[string]hcl.Range{}
	for _, b := range byType["rule"] {
		c.rule(b, false)
	}
	for _, b := range byType["deny"] {
		c.rule(b, true)
	}
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
		}
		if len(elems) == 0 && listOK {
			c.errorf(a.Expr.Range(), "Empty subjects", "A rule must name at least one subject.")
		}
	}
	if a := attrs["gpus"]; a != nil {
		r.gpus = map[string]bool{}
		elems, listOK := c.strList(a)
		for _, e := range elems {
			switch id, ok := parseGPU(e.s); {
			case !ok:
				c.errorf(e.rng, "Invalid GPU", `GPU %q: want an index such as "0", a UUID such as "GPU-8f6c…", or "*".`, e.s)
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
			case k == "*":
				r.allBuiltins = true
			case k == KernelCustomPTX || k == KernelCustomCUDA:
				r.kernels[k] = true
			case isCustom(k):
				c.errorf(e.rng, "Unknown kernel", "%q: custom code rights are %q and %q, each granted by name.", k, KernelCustomPTX, KernelCustomCUDA)
			case isBuiltin(k):
				r.kernels[k] = true
			default:
				msg := fmt.Sprintf("%q is not a built-in kernel (built-ins: %s)", k, strings.Join(builtinKernels, ", "))
				if s := suggest(k, builtinKernels); s != "" {
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

// testCase is a compiled test block.
type testCase struct {
	name     string
	subject  Subject
	req      Request
	expect   bool
	rule     string
	hasRule  bool
	class    string
	hasClass bool
	rng      hcl.Range
}

func (c *compiler) test(b *hcl.Block) {
	name := b.Labels[0]
	attrs := c.content(b, testSchema, "subject", "kernel", "expect")
	if !c.define(c.tests, b, "test") {
		return
	}
	t := testCase{name: name, rng: b.DefRange}
	if a := attrs["subject"]; a != nil {
		t.subject = c.testSubject(a)
	}
	if a := attrs["kernel"]; a != nil {
		t.req.Kernel, _ = c.str(a)
	}
	if a := attrs["gpu"]; a != nil {
		t.req.GPU, _ = c.str(a)
	}
	if a := attrs["gpu_uuid"]; a != nil {
		t.req.GPUUUID, _ = c.str(a)
	}
	if a := attrs["bytes"]; a != nil {
		t.req.Bytes, _ = c.quantity(a, "size", ParseSize)
	}
	if a := attrs["expect"]; a != nil {
		if s, ok := c.str(a); ok {
			switch s {
			case "allow":
				t.expect = true
			case "deny":
			default:
				c.errorf(a.Expr.Range(), "Invalid expectation", `expect must be "allow" or "deny", not %q.`, s)
			}
		}
	}
	if a := attrs["rule"]; a != nil {
		if s, ok := c.str(a); ok {
			t.rule, t.hasRule = s, true
			if _, known := c.rules[s]; !known {
				msg := fmt.Sprintf("No rule %q is defined in this file", s)
				if sug := suggest(s, keys(c.rules)); sug != "" {
					msg += fmt.Sprintf("; did you mean %q?", sug)
				} else {
					msg += "."
				}
				c.errorf(a.Expr.Range(), "Unknown rule", "%s", msg)
			}
		}
	}
	if a := attrs["class"]; a != nil {
		if s, ok := c.str(a); ok {
			t.class, t.hasClass = s, true
			c.knownClass(a, s)
		}
	}
	c.p.tests = append(c.p.tests, t)
}

var subjectFields = []string{"node", "user", "tags", "caps", "wireguard"}

// testSubject decodes a test's subject = { node = …, user = …, tags = […],
// caps = { "NAME" = [ {…} ] }, wireguard = bool }.
func (c *compiler) testSubject(a *hcl.Attribute) Subject {
	var s Subject
	if !c.literal(a.Expr) {
		return s
	}
	pairs, d := hcl.ExprMap(a.Expr)
	if d.HasErrors() {
		c.typeError(a, "an object such as { node = \"laptop\" }")
		return s
	}
	seen := map[string]bool{}
	for _, kv := range pairs {
		kval, kd := kv.Key.Value(nil)
		if kd.HasErrors() || kval.IsNull() || kval.Type() != cty.String {
			c.errorf(kv.Key.Range(), "Invalid subject field", "Subject field names are plain words: %s.", strings.Join(subjectFields, ", "))
			continue
		}
		key := kval.AsString()
		if seen[key] {
			c.errorf(kv.Key.Range(), "Duplicate subject field", "%q is given twice.", key)
			continue
		}
		seen[key] = true
		field := &hcl.Attribute{Name: key, Expr: kv.Value, Range: hcl.RangeBetween(kv.Key.Range(), kv.Value.Range()), NameRange: kv.Key.Range()}
		switch key {
		case "node":
			if v, ok := c.str(field); ok {
				if n, isWG := strings.CutPrefix(v, "wg:"); isWG {
					s.Node, s.WireGuard = n, true
				} else {
					s.Node = v
				}
			}
		case "user":
			s.User, _ = c.str(field)
		case "tags":
			elems, _ := c.strList(field)
			for _, e := range elems {
				s.Tags = append(s.Tags, e.s)
			}
		case "wireguard":
			if v, ok := c.value(field); ok {
				if b, err := convert.Convert(v, cty.Bool); err != nil {
					c.typeError(field, "a bool")
				} else if b.True() {
					s.WireGuard = true
				}
			}
		case "caps":
			s.Caps = c.testCaps(field)
		default:
			msg := fmt.Sprintf("A test subject has no field %q (fields: %s)", key, strings.Join(subjectFields, ", "))
			if sug := suggest(key, subjectFields); sug != "" {
				msg += fmt.Sprintf("; did you mean %q?", sug)
			} else {
				msg += "."
			}
			c.errorf(kv.Key.Range(), "Unsupported subject field", "%s", msg)
		}
	}
	return s
}

func (c *compiler) testCaps(a *hcl.Attribute) map[string][]json.RawMessage {
	v, ok := c.value(a)
	if !ok {
		return nil
	}
	if !v.Type().IsObjectType() && !v.Type().IsMapType() {
		c.typeError(a, `an object of capability name to a list of values, such as { "gpumesh.dev/cap/gpu" = [{ kernels = ["matrix_mul"] }] }`)
		return nil
	}
	caps := map[string][]json.RawMessage{}
	for it := v.ElementIterator(); it.Next(); {
		k, vals := it.Element()
		name := k.AsString()
		caps[name] = []json.RawMessage{}
		if vals.IsNull() || !(vals.Type().IsTupleType() || vals.Type().IsListType()) {
			c.typeError(a, fmt.Sprintf("a list of JSON values for capability %q", name))
			continue
		}
		for vit := vals.ElementIterator(); vit.Next(); {
			_, ev := vit.Element()
			if hasHugeNumber(ev) {
				c.errorf(a.Expr.Range(), "Invalid capability value", "capability %q: numbers must fit in 64 bits.", name)
				continue
			}
			raw, err := ctyjson.Marshal(ev, ev.Type())
			if err != nil {
				c.errorf(a.Expr.Range(), "Invalid capability value", "capability %q: %v.", name, err)
				continue
			}
			caps[name] = append(caps[name], raw)
		}
	}
	return caps
}

// Expression helpers. Each reports its own diagnostic and says whether the
// value is usable.

func (c *compiler) value(a *hcl.Attribute) (cty.Value, bool) {
	if !c.literal(a.Expr) {
		return cty.NilVal, false
	}
	v, d := a.Expr.Value(nil)
	if d.HasErrors() {
		c.diags = append(c.diags, d...)
		return cty.NilVal, false
	}
	if v.IsNull() {
		c.errorf(a.Expr.Range(), "Invalid value", "%q must not be null.", a.Name)
		return cty.NilVal, false
	}
	if !v.IsWhollyKnown() {
		c.errorf(a.Expr.Range(), "Invalid value", "%q must be a constant.", a.Name)
		return cty.NilVal, false
	}
	return v, true
}

// literal reports whether expr is a constant: literals, strings without
// ${…} or %{…}, lists and objects of constants, and negated numbers. A
// policy file holds data, and evaluating anything more is both needless and
// unsafe ("a${1e9999999}" takes HCL minutes to render). JSON-syntax
// expressions are always literal when evaluated without a context.
func (c *compiler) literal(expr hcl.Expression) bool {
	e, ok := expr.(hclsyntax.Expression)
	if !ok {
		return true
	}
	bad := nonLiteral(e)
	if bad == nil {
		return true
	}
	c.errorf(bad.Range(), "Only constants are allowed",
		"A policy file holds literal values: no variables, functions, operators or ${…} templates.")
	return false
}

func nonLiteral(e hclsyntax.Expression) hclsyntax.Expression {
	switch e := e.(type) {
	case *hclsyntax.LiteralValueExpr:
		return nil
	case *hclsyntax.TemplateExpr:
		// Plain text parts are string literals; an interpolation, even of
		// a literal ("a${1e9999999}"), is not.
		for _, p := range e.Parts {
			if l, ok := p.(*hclsyntax.LiteralValueExpr); !ok || l.Val.Type() != cty.String {
				return p
			}
		}
		return nil
	case *hclsyntax.TupleConsExpr:
		for _, x := range e.Exprs {
			if bad := nonLiteral(x); bad != nil {
				return bad
			}
		}
		return nil
	case *hclsyntax.ObjectConsExpr:
		for _, it := range e.Items {
			if bad := nonLiteral(it.KeyExpr); bad != nil {
				return bad
			}
			if bad := nonLiteral(it.ValueExpr); bad != nil {
				return bad
			}
		}
		return nil
	case *hclsyntax.ObjectConsKeyExpr:
		// A bare word key (node = …) is a traversal that names itself.
		if hcl.ExprAsKeyword(e.Wrapped) != "" && !e.ForceNonLiteral {
			return nil
		}
		return nonLiteral(e.Wrapped)
	case *hclsyntax.UnaryOpExpr:
		if _, ok := e.Val.(*hclsyntax.LiteralValueExpr); ok && e.Op == hclsyntax.OpNegate {
			return nil
		}
	}
	return e
}

func (c *compiler) typeError(a *hcl.Attribute, want string) {
	c.errorf(a.Expr.Range(), "Incorrect attribute value type", "Inappropriate value for attribute %q: %s is required.", a.Name, want)
}

func (c *compiler) str(a *hcl.Attribute) (string, bool) {
	v, ok := c.value(a)
	if !ok {
		return "", false
	}
	switch v.Type() {
	case cty.String:
		return v.AsString(), true
	case cty.Number:
		// A whole number where text is wanted (gpu = 0) is its digits.
		if s, ok := intText(v); ok {
			return s, true
		}
	}
	c.typeError(a, "a string")
	return "", false
}

// intText renders a whole number that fits in an int64 as decimal digits.
// Other numbers are refused rather than rendered: 1e9999999 would take
// minutes to write out.
func intText(v cty.Value) (string, bool) {
	f := v.AsBigFloat()
	if !f.IsInt() {
		return "", false
	}
	n, acc := f.Int64()
	if acc != big.Exact {
		return "", false
	}
	return strconv.FormatInt(n, 10), true
}

// hasHugeNumber reports whether v holds a number outside ±2⁶³, which
// encoding would be slow to write out.
func hasHugeNumber(v cty.Value) bool {
	huge := false
	_ = cty.Walk(v, func(_ cty.Path, x cty.Value) (bool, error) {
		if x.IsKnown() && !x.IsNull() && x.Type() == cty.Number {
			f := x.AsBigFloat()
			if f.IsInf() || f.MantExp(nil) > 63 {
				huge = true
			}
		}
		return !huge, nil
	})
	return huge
}

type elem struct {
	s   string
	rng hcl.Range
}

// strList decodes a list of strings, keeping each element's position.
func (c *compiler) strList(a *hcl.Attribute) ([]elem, bool) {
	exprs, d := hcl.ExprList(a.Expr)
	if d.HasErrors() {
		c.typeError(a, "a list of strings")
		return nil, false
	}
	out := make([]elem, 0, len(exprs))
	ok := true
	for _, e := range exprs {
		sub := &hcl.Attribute{Name: a.Name, Expr: e, Range: e.Range(), NameRange: a.NameRange}
		v, vok := c.value(sub)
		if !vok {
			ok = false
			continue
		}
		var s string
		switch v.Type() {
		case cty.String:
			s = v.AsString()
		case cty.Number:
			var isInt bool
			if s, isInt = intText(v); isInt {
				break
			}
			fallthrough
		default:
			c.errorf(e.Range(), "Incorrect attribute value type", "Inappropriate element of %q: a string is required.", a.Name)
			ok = false
			continue
		}
		out = append(out, elem{s: s, rng: e.Range()})
	}
	return out, ok
}

func (c *compiler) number(a *hcl.Attribute) (*big.Float, bool) {
	v, ok := c.value(a)
	if !ok {
		return nil, false
	}
	if v.Type() != cty.Number {
		// Numbers written as strings ("4") are accepted, as HCL does.
		n, err := convert.Convert(v, cty.Number)
		if err != nil || v.Type() != cty.String {
			c.typeError(a, "a number")
			return nil, false
		}
		v = n
	}
	return v.AsBigFloat(), true
}

func (c *compiler) int(a *hcl.Attribute, lo, hi int) (int, bool) {
	f, ok := c.number(a)
	if !ok {
		return 0, false
	}
	if !f.IsInt() {
		c.errorf(a.Expr.Range(), "Invalid value", "%q must be a whole number.", a.Name)
		return 0, false
	}
	n, _ := f.Int64()
	if n < int64(lo) || n > int64(hi) {
		c.errorf(a.Expr.Range(), "Invalid value", "%q must be between %d and %d.", a.Name, lo, hi)
		return 0, false
	}
	return int(n), true
}

func (c *compiler) float(a *hcl.Attribute) (float64, bool) {
	f, ok := c.number(a)
	if !ok {
		return 0, false
	}
	v, _ := f.Float64()
	if v < 0 || v > 1e9 {
		c.errorf(a.Expr.Range(), "Invalid value", "%q must be between 0 and 1e9.", a.Name)
		return 0, false
	}
	return v, true
}

// quantity decodes a size or rate: a string with a unit, or a number of
// bytes.
func (c *compiler) quantity(a *hcl.Attribute, what string, parse func(string) (int64, error)) (int64, bool) {
	v, ok := c.value(a)
	if !ok {
		return 0, false
	}
	switch v.Type() {
	case cty.Number:
		f := v.AsBigFloat()
		n, acc := f.Int64()
		if !f.IsInt() || acc != big.Exact || n < 0 {
			c.errorf(a.Expr.Range(), "Invalid "+what, "%q must be a whole, non-negative number of bytes, or a string such as \"64MiB\".", a.Name)
			return 0, false
		}
		return n, true
	case cty.String:
		n, err := parse(v.AsString())
		if err != nil {
			c.errorf(a.Expr.Range(), "Invalid "+what, "%s", sentence(strings.TrimPrefix(err.Error(), "policy: ")))
			return 0, false
		}
		return n, true
	}
	c.typeError(a, "a "+what+` such as "64MiB" or a number of bytes`)
	return 0, false
}

// parseGPU canonicalises a GPU id: "*", a decimal index, or a GPU/MIG UUID
// (lower-cased).
func parseGPU(s string) (string, bool) {
	if s == "*" {
		return s, true
	}
	if n, err := strconv.ParseUint(s, 10, 16); err == nil {
		return strconv.FormatUint(n, 10), true
	}
	l := lower(s)
	for _, p := range []string{"gpu-", "mig-"} {
		if rest, ok := strings.CutPrefix(l, p); ok && rest != "" {
			for _, ch := range rest {
				if !(ch >= '0' && ch <= '9' || ch >= 'a' && ch <= 'f' || ch == '-' || ch == '/') {
					return "", false
				}
			}
			return l, true
		}
	}
	return "", false
}

func isBuiltin(k string) bool {
	for _, b := range builtinKernels {
		if b == k {
			return true
		}
	}
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
