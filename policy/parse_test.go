package policy

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// okRule is a valid rule body for building malformed files around.
const okRule = `
rule "ok" {
  subjects = ["laptop"]
  gpus     = ["0"]
  kernels  = ["relu"]
}
`

// TestDiagnostics checks that each class of malformed policy yields exactly
// one diagnostic, saying what is wrong, at the right file:line:col.
func TestDiagnostics(t *testing.T) {
	for _, tc := range []struct {
		name    string
		file    string
		src     string
		pos     string // file:line:col of the diagnostic
		summary string
		detail  string // substring of the detail
	}{
		{"missing version", "p.hcl", okRule, "p.hcl:1:1", "Missing version", "add version = 1"},
		{"missing version json", "p.json", `{"group": {"g": {"members": []}}}`, "p.json:1:1", "Missing version", "add version = 1"},
		{"unsupported version", "p.hcl", "version = 2\n", "p.hcl:1:11", "Unsupported version", "version = 2"},
		{"version of wrong type", "p.hcl", `version = "one"`, "p.hcl:1:11", "Incorrect attribute value type", "a number"},
		{"typo'd key", "p.hcl", `version = 1
rule "r" {
  subjects = ["laptop"]
  gpus     = ["0"]
  kernel   = ["relu"]
}`, "p.hcl:5:3", "Unsupported argument", `did you mean "kernels"?`},
		{"typo'd key json", "p.json", `{"version": 1,
 "rule": {"r": {"subjects": ["laptop"], "gpus": ["0"], "kernel": ["relu"]}}}`, "p.json:2:56", "Extraneous JSON object property", `did you mean "kernels"?`},
		{"typo'd block", "p.hcl", "version = 1\nrules \"r\" {\n}\n", "p.hcl:2:1", "Unsupported block type", `did you mean "rule"?`},
		{"typo'd top-level key", "p.hcl", "version = 1\nversoin = 1\n", "p.hcl:2:1", "Unsupported argument", `"versoin" is not expected`},
		{"missing required key", "p.hcl", `version = 1
rule "r" {
  subjects = ["laptop"]
  gpus     = ["0"]
}`, "p.hcl:2:1", "Missing required argument", `needs a "kernels" argument`},
		{"wrong type number", "p.hcl", `version = 1
rule "r" {
  subjects       = ["laptop"]
  gpus           = ["0"]
  kernels        = ["relu"]
  max_concurrent = "four"
}`, "p.hcl:6:20", "Incorrect attribute value type", "a number"},
		{"wrong type list", "p.hcl", `version = 1
rule "r" {
  subjects = "laptop"
  gpus     = ["0"]
  kernels  = ["relu"]
}`, "p.hcl:3:14", "Incorrect attribute value type", "a list of strings"},
		{"wrong type list json", "p.json", `{"version": 1, "rule": {"r": {"subjects": "laptop", "gpus": ["0"], "kernels": ["relu"]}}}`,
			"p.json:1:43", "Incorrect attribute value type", "a list of strings"},
		{"wrong element type", "p.hcl", `version = 1
rule "r" {
  subjects = ["laptop", true]
  gpus     = ["0"]
  kernels  = ["relu"]
}`, "p.hcl:3:25", "Incorrect attribute value type", "a string"},
		{"unknown group", "p.hcl", `version = 1
group "ml" { members = ["laptop"] }
rule "r" {
  subjects = ["tag:ci", "group:mll"]
  gpus     = ["0"]
  kernels  = ["relu"]
}`, "p.hcl:4:25", "Unknown group", `did you mean "group:ml"?`},
		{"unknown group json", "p.json", `{"version": 1, "rule": {"r": {"subjects": ["group:x"], "gpus": ["0"], "kernels": ["relu"]}}}`,
			"p.json:1:44", "Unknown group", `No group "x"`},
		{"bad dscp name", "p.hcl", `version = 1
class "c" {
  dscp = "EF2"
}`, "p.hcl:3:10", "Invalid DSCP", `did you mean "EF"?`},
		{"bad dscp number", "p.hcl", `version = 1
class "c" { dscp = 64 }`, "p.hcl:2:20", "Invalid DSCP", "0-63"},
		{"bad dscp type", "p.hcl", `version = 1
class "c" { dscp = ["EF"] }`, "p.hcl:2:20", "Incorrect attribute value type", "DSCP name"},
		{"bad dscp json", "p.json", `{"version": 1, "class": {"c": {"dscp": "AF44"}}}`, "p.json:1:40", "Invalid DSCP", "AF44"},
		{"duplicate rule name", "p.hcl", `version = 1` + okRule + okRule, "p.hcl:8:6", "Duplicate rule name", "already defined at p.hcl:2:1"},
		{"rule and deny share names", "p.hcl", `version = 1` + okRule + `deny "ok" { subjects = ["x"] }`, "p.hcl:7:6", "Duplicate rule name", `"ok"`},
		{"duplicate rule name json", "p.json", `{"version": 1, "rule": [
 {"r": {"subjects": ["a"], "gpus": ["0"], "kernels": ["relu"]}},
 {"r": {"subjects": ["b"], "gpus": ["0"], "kernels": ["relu"]}}]}`, "p.json:3:3", "Duplicate rule name", "already defined at p.json:2:8"},
		{"duplicate group", "p.hcl", "version = 1\ngroup \"g\" { members = [] }\ngroup \"g\" { members = [] }\n", "p.hcl:3:7", "Duplicate group name", "p.hcl:2:1"},
		{"duplicate class", "p.hcl", "version = 1\nclass \"c\" { dscp = 0 }\nclass \"c\" { dscp = 1 }\n", "p.hcl:3:7", "Duplicate class name", "p.hcl:2:1"},
		{"duplicate test", "p.hcl", "version = 1\ntest \"t\" {\n subject = { node = \"a\" }\n kernel = \"relu\"\n expect = \"deny\"\n}\ntest \"t\" {\n subject = { node = \"a\" }\n kernel = \"relu\"\n expect = \"deny\"\n}\n", "p.hcl:7:6", "Duplicate test name", ""},
		{"unknown class", "p.hcl", `version = 1
class "interactive" { dscp = "EF" }
rule "r" {
  subjects = ["laptop"]
  gpus     = ["0"]
  kernels  = ["relu"]
  class    = "interactiv"
}`, "p.hcl:7:14", "Unknown class", `did you mean "interactive"?`},
		{"unknown kernel", "p.hcl", `version = 1
rule "r" {
  subjects = ["laptop"]
  gpus     = ["0"]
  kernels  = ["matrx_mul"]
}`, "p.hcl:5:15", "Unknown kernel", `did you mean "matrix_mul"?`},
		{"custom wildcard", "p.hcl", `version = 1
rule "r" {
  subjects = ["laptop"]
  gpus     = ["0"]
  kernels  = ["custom:*"]
}`, "p.hcl:5:15", "Unknown kernel", "granted by name"},
		{"bad gpu", "p.hcl", `version = 1
rule "r" {
  subjects = ["laptop"]
  gpus     = ["zero"]
  kernels  = ["relu"]
}`, "p.hcl:4:15", "Invalid GPU", `"zero"`},
		{"bad subject", "p.hcl", `version = 1
rule "r" {
  subjects = ["host:laptop"]
  gpus     = ["0"]
  kernels  = ["relu"]
}`, "p.hcl:3:15", "Invalid subject", `unknown kind "host"`},
		{"bad tag", "p.hcl", `version = 1
rule "r" {
  subjects = ["tag:9lives"]
  gpus     = ["0"]
  kernels  = ["relu"]
}`, "p.hcl:3:15", "Invalid subject", "starts with a letter"},
		{"empty subjects", "p.hcl", `version = 1
rule "r" {
  subjects = []
  gpus     = ["0"]
  kernels  = ["relu"]
}`, "p.hcl:3:14", "Empty subjects", ""},
		{"bad size", "p.hcl", `version = 1
rule "r" {
  subjects   = ["laptop"]
  gpus       = ["0"]
  kernels    = ["relu"]
  max_memory = "2 gigs"
}`, "p.hcl:6:16", "Invalid size", `unknown unit "gigs"`},
		{"negative size", "p.hcl", `version = 1
rule "r" {
  subjects   = ["laptop"]
  gpus       = ["0"]
  kernels    = ["relu"]
  max_memory = -1
}`, "p.hcl:6:16", "Invalid size", "non-negative"},
		{"burst without rate", "p.hcl", `version = 1
rule "r" {
  subjects = ["laptop"]
  gpus     = ["0"]
  kernels  = ["relu"]
  burst    = 3
}`, "p.hcl:6:3", "Burst without rate", ""},
		{"negative rate", "p.hcl", `version = 1
rule "r" {
  subjects = ["laptop"]
  gpus     = ["0"]
  kernels  = ["relu"]
  rate     = -1
}`, "p.hcl:6:14", "Invalid value", "between 0"},
		{"bad duration", "p.hcl", `version = 1
rule "r" {
  subjects     = ["laptop"]
  gpus         = ["0"]
  kernels      = ["relu"]
  idle_timeout = "ten minutes"
}`, "p.hcl:6:18", "Invalid duration", "10m"},
		{"priority out of range", "p.hcl", "version = 1\nclass \"c\" {\n  dscp = \"EF\"\n  priority = 8\n}\n", "p.hcl:4:14", "Invalid value", "between 0 and 7"},
		{"class rate", "p.hcl", "version = 1\nclass \"c\" {\n  dscp = \"EF\"\n  rate = \"fast\"\n}\n", "p.hcl:4:10", "Invalid rate", "must start with a number"},
		{"group in group", "p.hcl", "version = 1\ngroup \"a\" { members = [] }\ngroup \"b\" { members = [\"group:a\"] }\n", "p.hcl:3:24", "Invalid group member", "cannot contain groups"},
		{"variables are not allowed", "p.hcl", `version = 1
rule "r" {
  subjects = [var.who]
  gpus     = ["0"]
  kernels  = ["relu"]
}`, "p.hcl:3:15", "Only constants are allowed", "no variables"},
		{"templates are not allowed", "p.hcl", `version = 1
group "g" { members = ["a${1e9999999}"] }`, "p.hcl:2:28", "Only constants are allowed", "templates"},
		{"functions are not allowed", "p.hcl", `version = 1
group "g" { members = [upper("a")] }`, "p.hcl:2:24", "Only constants are allowed", "functions"},
		{"operators are not allowed", "p.hcl", `version = 1
class "c" { dscp = 40 + 6 }`, "p.hcl:2:20", "Only constants are allowed", "operators"},
		{"templates in test subjects", "p.hcl", `version = 1
test "t" {
  subject = { node = "a${1}" }
  kernel  = "relu"
  expect  = "deny"
}`, "p.hcl:3:26", "Only constants are allowed", ""},
		{"test subject typo", "p.hcl", `version = 1
test "t" {
  subject = { nod = "laptop" }
  kernel  = "relu"
  expect  = "deny"
}`, "p.hcl:3:15", "Unsupported subject field", `did you mean "node"?`},
		{"test subject typo json", "p.json", `{"version": 1, "test": {"t": {"subject": {"nod": "laptop"}, "kernel": "relu", "expect": "deny"}}}`,
			"p.json:1:43", "Unsupported subject field", `did you mean "node"?`},
		{"test expectation", "p.hcl", `version = 1
test "t" {
  subject = { node = "laptop" }
  kernel  = "relu"
  expect  = "maybe"
}`, "p.hcl:5:13", "Invalid expectation", `"maybe"`},
		{"test names unknown rule", "p.hcl", `version = 1` + okRule + `
test "t" {
  subject = { node = "laptop" }
  kernel  = "relu"
  expect  = "allow"
  rule    = "okk"
}`, "p.hcl:12:13", "Unknown rule", `did you mean "ok"?`},
		{"syntax error", "p.hcl", "version = 1\nrule \"r\" {\n", "p.hcl:2:10", "Unclosed configuration block", ""},
		{"json syntax error", "p.json", `{"version": 1,}`, "p.json:1:14", "Trailing comma in object", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Parse(tc.file, []byte(tc.src))
			if err == nil {
				t.Fatalf("parsed: %+v", p.Summary())
			}
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %T is not a *ParseError: %v", err, err)
			}
			var diags hcl.Diagnostics
			if !errors.As(err, &diags) {
				t.Fatal("errors.As cannot reach the hcl.Diagnostics")
			}
			if len(pe.Diags) != 1 {
				t.Fatalf("want exactly one diagnostic, got %d:\n%v", len(pe.Diags), err)
			}
			d := pe.Diags[0]
			if d.Subject == nil {
				t.Fatalf("diagnostic has no position: %v", err)
			}
			if got := Pos(*d.Subject); got != tc.pos {
				t.Errorf("position %s, want %s (%v)", got, tc.pos, err)
			}
			if d.Summary != tc.summary {
				t.Errorf("summary %q, want %q", d.Summary, tc.summary)
			}
			if !strings.Contains(strings.ToLower(d.Detail), strings.ToLower(tc.detail)) {
				t.Errorf("detail %q does not contain %q", d.Detail, tc.detail)
			}
			if msg := err.Error(); !strings.HasPrefix(msg, "policy: "+tc.pos+": ") {
				t.Errorf("error %q does not start with its position", msg)
			}
			var b strings.Builder
			if err := pe.WriteText(&b, 0, false); err != nil || !strings.Contains(b.String(), tc.summary) {
				t.Errorf("WriteText: %v\n%s", err, b.String())
			}
		})
	}
}

func TestParseUnknownExtension(t *testing.T) {
	if _, err := Parse("policy.yaml", []byte("version: 1")); err == nil || !strings.Contains(err.Error(), ".hcl or .json") {
		t.Errorf("got %v", err)
	}
	if _, err := ParseFile("testdata/does-not-exist.hcl"); err == nil {
		t.Error("missing file parsed")
	}
}

func TestParseSizeRate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		rate bool
		want int64
	}{
		{"0", false, 0}, {"4096", false, 4096}, {"64MiB", false, 64 << 20}, {"2GiB", false, 2 << 30},
		{"2gib", false, 2 << 30}, {"512KB", false, 512000}, {"1.5GB", false, 1500000000}, {"1.5KiB", false, 1536},
		{"10 MB", false, 10e6}, {"1TiB", false, 1 << 40}, {"3B", false, 3},
		{"200MB/s", true, 200e6}, {"1GiB/s", true, 1 << 30}, {"800Mbit/s", true, 100e6}, {"100mbit", true, 12.5e6},
		{"1gbps", true, 125e6}, {"1000", true, 1000},
	} {
		parse := ParseSize
		if tc.rate {
			parse = ParseRate
		}
		got, err := parse(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("parse %q = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "MiB", "-1MiB", "2 gigs", "1e3", "99999999999TiB", "1..2MB", "64MiB/s"} {
		if v, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", bad, v)
		}
	}
	for _, bad := range []string{"fast", "10 furlongs/s", "/s"} {
		if v, err := ParseRate(bad); err == nil {
			t.Errorf("ParseRate(%q) = %d, want an error", bad, v)
		}
	}
	for _, tc := range []struct {
		n    int64
		want string
	}{{64 << 20, "64MiB"}, {2 << 30, "2GiB"}, {1500, "1500B"}, {200e6, "200MB"}, {0, "0B"}} {
		if got := FormatSize(tc.n); got != tc.want {
			t.Errorf("FormatSize(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}

func TestSubjectSyntax(t *testing.T) {
	for _, tc := range []struct {
		in, canonical string
	}{
		{"laptop", "node:laptop"}, {"node:LapTop", "node:laptop"}, {"alice@example.com", "user:alice@example.com"},
		{"user:Bob@Example.com", "user:bob@example.com"}, {"tag:CI", "tag:ci"}, {"group:ml", "group:ml"},
		{"cap:gpumesh.dev/cap/gpu", "cap:gpumesh.dev/cap/gpu"}, {"wg:workstation", "wg:workstation"}, {"*", "*"},
		{"alice@github", "user:alice@github"},
		// Logins without a domain (Headscale users made on its CLI): the
		// user: prefix, or Headscale's own spelling with a trailing "@".
		{"user:alice", "user:alice"}, {"alice@", "user:alice"}, {"user:Alice@", "user:alice"},
		{"user:https://idp.example.com/u/17", "user:https://idp.example.com/u/17"},
		// A bare word is always a node, never a user.
		{"alice", "node:alice"},
	} {
		ref, err := parseSubject(tc.in)
		if err != nil || ref.canonical() != tc.canonical {
			t.Errorf("parseSubject(%q) = %q, %v; want %q", tc.in, ref.canonical(), err, tc.canonical)
		}
	}
	for _, bad := range []string{"", " laptop", "lap top", "host:x", "tag:", "tag:-x", "wg:", "cap:", "group:", "@x",
		"user:", "user:@", "@", "x@@", "user:@x", "user:a b", "user:a,b", "user:*", "user:a\"b", "user:a\x00b"} {
		if ref, err := parseSubject(bad); err == nil {
			t.Errorf("parseSubject(%q) = %+v, want an error", bad, ref)
		}
	}
}

func ExampleParse() {
	p, err := Parse("demo.hcl", []byte(`
version = 1
class "interactive" { dscp = "EF" }
rule "laptop" {
  subjects = ["laptop"]
  gpus     = ["*"]
  kernels  = ["*"]
  class    = "interactive"
}
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(p.Evaluate(Subject{Node: "laptop"}, Request{Kernel: "matrix_mul"}).Reason)
	fmt.Println(p.Evaluate(Subject{Node: "laptop"}, Request{Kernel: "custom:ptx"}).Reason)
	fmt.Println(p.Evaluate(Subject{Node: "stranger"}, Request{Kernel: "matrix_mul"}).Reason)
	// Output:
	// rule "laptop" allows laptop to call matrix_mul on gpu 0
	// no rule allows laptop to call custom:ptx on gpu 0 (default deny)
	// no rule allows stranger to call matrix_mul on gpu 0 (default deny)
}

// TestHugeNumbers: numbers far beyond any limit are refused with a
// diagnostic, not rendered (1e9999999 written out in full took 40 s before
// this was fixed; the fuzzer found it).
func TestHugeNumbers(t *testing.T) {
	for _, src := range []string{
		"version = 1\nclass \"c\" { dscp = 1e9999999 }\n",
		"version = 1\nrule \"r\" {\n subjects = [1e9999999]\n gpus = [\"0\"]\n kernels = [\"relu\"]\n}\n",
		"version = 1e9999999\n",
		"version = 1\ntest \"t\" {\n subject = { node = \"n\", caps = { \"x\" = [{ a = 1e9999999 }] } }\n kernel = \"relu\"\n expect = \"deny\"\n}\n",
		"version = 1\ntest \"t\" {\n subject = { node = 1e9999999 }\n kernel = \"relu\"\n expect = \"deny\"\n}\n",
		"version = 1\nrule \"r\" {\n subjects = [\"a\"]\n gpus = [1e999999]\n kernels = [\"relu\"]\n}\n",
		"version = 1\nrule \"r\" {\n subjects = [\"a\"]\n gpus = [\"0\"]\n kernels = [\"relu\"]\n max_memory = 1e9999999\n}\n",
	} {
		if _, err := Parse("huge.hcl", []byte(src)); err == nil {
			t.Errorf("parsed:\n%s", src)
		}
	}
}

func TestDiagnosticsSortedByPosition(t *testing.T) {
	_, err := Parse("p.hcl", []byte(`version = 1
rule "r" {
  subjects = ["group:mll"]
  gpus     = ["0"]
  kernel   = ["relu"]
}
class "c" { dscp = "EF2" }
`))
	var pe *ParseError
	if !errors.As(err, &pe) || len(pe.Diags) != 3 {
		t.Fatalf("got %v", err)
	}
	for i, want := range []int{3, 5, 7} {
		if got := pe.Diags[i].Subject.Start.Line; got != want {
			t.Errorf("diagnostic %d on line %d, want %d:\n%v", i, got, want, err)
		}
	}
	if strings.Contains(err.Error(), "?.") {
		t.Errorf("doubled punctuation: %v", err)
	}
}

func TestFormatDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		10 * time.Minute: "10m", 90 * time.Minute: "1h30m", time.Hour: "1h", 90 * time.Second: "1m30s", 30 * time.Second: "30s",
	} {
		if got := FormatDuration(d); got != want {
			t.Errorf("FormatDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

// TestLiteralsAccepted: the constant forms a policy may use all parse.
func TestLiteralsAccepted(t *testing.T) {
	mustParse(t, "lit.hcl", `version = 1
group "g" {
  members = [
    "laptop",   # trailing commas and comments
    "alice\u0040example.com",
  ]
}
class "c" {
  dscp     = 46
  priority = "3"
}
rule "r" {
  subjects       = ["group:g", "tag:a-b"]
  gpus           = [0, "1"]
  kernels        = ["relu"]
  max_concurrent = 2
}
test "t" {
  subject = { "node" = "laptop", tags = ["tag:x"], caps = { "a/b" = [{ n = -1.5, s = "x", l = [true] }] } }
  kernel  = "relu"
  gpu     = 1
  expect  = "allow"
}
`)
}
