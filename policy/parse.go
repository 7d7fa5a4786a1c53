package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	hcljson "github.com/hashicorp/hcl/v2/json"
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
