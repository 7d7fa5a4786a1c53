package policy

import (
	"math/big"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
)

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
