package policy

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
	ctyjson "github.com/zclconf/go-cty/cty/json"
)

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

var subjectFields = []string{"node", "user", "tags", "caps", "wireguard", "k8s", "pod"}

// testSubject decodes a test's subject = { node = …, user = …, tags = […],
// caps = { "NAME" = [ {…} ] }, wireguard = bool }; a pod adds
// k8s = "NAMESPACE/SERVICEACCOUNT" and optionally pod = "NAME", the other
// fields then describing the agent it calls through.
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
		case "k8s":
			if v, ok := c.str(field); ok {
				pod, err := ParsePod(v)
				if err != nil {
					c.errorf(field.Expr.Range(), "Invalid pod", "k8s = %q: want a pod's \"NAMESPACE/SERVICEACCOUNT\".", v)
					break
				}
				if s.Pod != nil {
					pod.Name = s.Pod.Name
				}
				s.Pod = pod
			}
		case "pod":
			if v, ok := c.str(field); ok {
				if !ValidK8sName(v) {
					c.errorf(field.Expr.Range(), "Invalid pod", "pod = %q is not a Kubernetes pod name.", v)
					break
				}
				if s.Pod == nil {
					s.Pod = &Pod{}
				}
				s.Pod.Name = v
			}
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
	if s.Pod != nil && s.Pod.Namespace == "" {
		c.errorf(a.Expr.Range(), "Invalid pod", `A test subject with pod needs k8s = "NAMESPACE/SERVICEACCOUNT".`)
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
