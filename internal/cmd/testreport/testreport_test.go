package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

const allowText = `# Skips that are decisions.

# Root-only tests skip for other users.
nonroot: ^needs root\b

# No GPU on this machine.
^no GPU here$
`

// sampleRun runs testreport over `go test -json` in testdata/sample, in
// the given packages, and returns its exit status and output.
func sampleRun(t *testing.T, env []string, flags []string, goTestArgs ...string) (int, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs go test on testdata/sample (-short)")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("no go command to run the sample tests with: %v", err)
	}
	allow := filepath.Join(t.TempDir(), "allowed-skips")
	if err := os.WriteFile(allow, []byte(allowText), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Chdir("testdata/sample")
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	args := append(append([]string{"-allow", allow}, flags...), "--", gobin, "test", "-json", "-count=1")
	var stdout, stderr bytes.Buffer
	code := run(append(args, goTestArgs...), &stdout, &stderr)
	t.Logf("testreport %s: exit %d\n%s\nstderr:\n%s", strings.Join(goTestArgs, " "), code, stdout.String(), stderr.String())
	return code, stdout.String()
}

// TestLikeGoTest: over real `go test -json` output, testreport prints what
// `go test` prints without -v (failures with their logs, nested; build
// errors; package lines; nothing of passing tests), then every skip with the message it
// was given, marked by the allowlist, and keeps go test's exit status.
func TestLikeGoTest(t *testing.T) {
	code, out := sampleRun(t, nil, nil, "./...")
	if code != 1 {
		t.Errorf("exit %d, want go test's 1", code)
	}
	for _, want := range []string{
		"--- FAIL: TestParent (",
		"    --- FAIL: TestParent/bad (",
		"        skips_test.go:24: why it failed\n        skips_test.go:25: boom\n",
		"FAIL\tsample/skips\t",
		"ok  \tsample/good\t",
		"[allowed, ", // no GPU here
		"[NOT ALLOWED] needs a thing:\n  | on two lines\n      skips: TestSkipInHelper\n",
		"[NOT ALLOWED] hangs only when TESTREPORT_HANG is set\n      hang: TestHang\n",
		"broken/broken_test.go:7:14: cannot use",
		"FAIL\tsample/broken [build failed]\n",
		"=== 3 passed, 3 failed, 4 skipped: ",
		"=== FAILED: broken (the package: a build error, TestMain, a crash), skips.TestParent, skips.TestParent/bad\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	for _, unwanted := range []string{"=== RUN", "not shown", "fine", "--- PASS", "--- SKIP", "\nPASS\n"} {
		if strings.Contains(out, unwanted) {
			t.Errorf("output has %q, which go test without -v does not print", unwanted)
		}
	}
	root := "[NOT ALLOWED] needs root (network namespaces)"
	if os.Geteuid() != 0 {
		root = "[allowed when not root, "
	}
	if !strings.Contains(out, root) {
		t.Errorf("output lacks %q", root)
	}
}

// TestStrict: a run whose tests pass exits 0 with skips on the allowlist
// or without -strict, and 1 with -strict and a skip not on it.
func TestStrict(t *testing.T) {
	for _, tt := range []struct {
		name  string
		flags []string
		run   string
		want  int
	}{
		{"allowed skips", []string{"-strict"}, "TestPass|TestParent/(ok|gpu)", 0},
		{"unknown skip", []string{"-strict"}, "TestPass|TestSkipInHelper", 1},
		{"unknown skip without -strict", nil, "TestPass|TestSkipInHelper", 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if code, _ := sampleRun(t, nil, tt.flags, "-run", tt.run, "./skips"); code != tt.want {
				t.Errorf("exit %d, want %d", code, tt.want)
			}
		})
	}
}

// TestUnfinishedTest: a test killed by the -timeout never reports; its
// output and the timeout's panic are printed all the same.
func TestUnfinishedTest(t *testing.T) {
	code, out := sampleRun(t, []string{"TESTREPORT_HANG=1"}, nil, "-timeout", "3s", "./hang")
	if code == 0 {
		t.Errorf("exit 0 for a test that timed out")
	}
	for _, want := range []string{
		"--- FAIL: TestHang (did not finish)\n    hang_test.go:15: about to hang\npanic: test timed out",
		"\nFAIL\tsample/hang\t",
		"=== 0 passed, 1 failed, 0 skipped",
		"=== FAILED: hang.TestHang\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Index(out, "panic: test timed out") > strings.Index(out, "FAIL\tsample/hang") {
		t.Error("the package's FAIL line comes before its unfinished test's output")
	}
}

func TestSkipReason(t *testing.T) {
	for _, tt := range []struct {
		name  string
		lines []string
		want  string
	}{
		{"one line", []string{"=== RUN   TestX\n", "    x_test.go:9: needs root\n", "--- SKIP: TestX (0.00s)\n"}, "needs root"},
		{"last message wins", []string{"    x_test.go:3: setting up\n", "    x_test.go:9: no GPU\n"}, "no GPU"},
		{"continued", []string{"    x_test.go:9: needs:\n", "        a\n", "        b\n", "--- SKIP: TestX (0.00s)\n"}, "needs:\na\nb"},
		{"interleaved with a parallel test", []string{"    x_test.go:9: no GPU\n", "=== NAME  TestX\n", "--- SKIP: TestX (0.00s)\n"}, "no GPU"},
		{"printed after the message", []string{"    x_test.go:9: no GPU\n", "stray output\n"}, ""},
		{"no message", []string{"=== RUN   TestX\n", "--- SKIP: TestX (0.00s)\n"}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := skipReason(tt.lines); got != tt.want {
				t.Errorf("skipReason = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestAllowlist(t *testing.T) {
	a, err := parseAllowlist("allow", strings.NewReader(allowText))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		reason string
		root   bool
		line   int // 0: not allowed
	}{
		{"needs root (network namespaces)", false, 4},
		{"needs root (network namespaces)", true, 0},
		{"needs rootless mode", false, 0},
		{"no GPU here", true, 7},
		{"no GPU here, and more", true, 0},
	} {
		e := a.match(tt.reason, tt.root)
		if got := 0; e != nil {
			got = e.line
			if got != tt.line {
				t.Errorf("match(%q, root=%v) = line %d, want %d", tt.reason, tt.root, got, tt.line)
			}
		} else if tt.line != 0 {
			t.Errorf("match(%q, root=%v) = nil, want line %d", tt.reason, tt.root, tt.line)
		}
	}
	if e := a.match("no GPU here", false); e == nil || e.why != "No GPU on this machine." {
		t.Errorf("entry %+v: want its comment as the reason it is allowed", e)
	}

	for _, tt := range []struct {
		name, text string
		err        *regexp.Regexp
	}{
		{"no comment", "^a$\n", regexp.MustCompile(`^f:1: pattern "\^a\$" has no comment`)},
		{"one comment, two patterns", "# why\n^a$\n^b$\n", regexp.MustCompile(`^f:3: pattern "\^b\$" has no comment`)},
		{"comment cut off by a blank line", "# why\n\n^a$\n", regexp.MustCompile(`^f:3: `)},
		{"bad pattern", "# why\nneeds (root\n", regexp.MustCompile(`^f:2: error parsing regexp`)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseAllowlist("f", strings.NewReader(tt.text))
			if err == nil || !tt.err.MatchString(err.Error()) {
				t.Errorf("parseAllowlist: %v, want an error matching %v", err, tt.err)
			}
		})
	}
}

// TestRepoAllowlist: the repository's own allowlist parses.
func TestRepoAllowlist(t *testing.T) {
	a, err := loadAllowlist("../../../.ci/allowed-skips")
	if err != nil {
		t.Fatal(err)
	}
	if len(a.entries) == 0 {
		t.Error("no entries")
	}
}
