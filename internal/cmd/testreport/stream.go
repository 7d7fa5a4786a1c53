package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action     string
	Package    string
	Test       string
	Output     string
	ImportPath string // build-output events
}

// skip is a skipped test and the message it skipped with.
type skip struct {
	Package, Test, Reason string
}

// testKey names a test (or subtest) in a package.
type testKey struct{ pkg, test string }

// record is what a running test has printed, kept until it and its
// parent have ended.
type record struct {
	lines    []string
	children []string // subtests' names, in the order they started
	failed   bool
}

// stream turns test events into go test's human-readable output and
// collects the results.
type stream struct {
	out     io.Writer
	verbose bool
	records map[testKey]*record

	passed  int
	failed  []testKey
	skipped []skip
}

func newStream(out io.Writer, verbose bool) *stream {
	return &stream{out: out, verbose: verbose, records: map[testKey]*record{}}
}

// read handles every event in r; lines that are not events are printed as
// they are.
func (s *stream) read(r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil || e.Action == "" {
			fmt.Fprintf(s.out, "%s\n", line)
			continue
		}
		s.handle(e)
	}
	return sc.Err()
}

func (s *stream) handle(e event) {
	if e.Action == "build-output" {
		io.WriteString(s.out, e.Output)
		return
	}
	if e.Test == "" {
		s.handlePackage(e)
		return
	}
	k := testKey{e.Package, e.Test}
	switch e.Action {
	case "run":
		s.records[k] = &record{}
		if i := strings.LastIndexByte(e.Test, '/'); i >= 0 {
			if parent := s.records[testKey{e.Package, e.Test[:i]}]; parent != nil {
				parent.children = append(parent.children, e.Test)
			}
		}
	case "output":
		if s.verbose {
			io.WriteString(s.out, e.Output)
			return
		}
		if r := s.records[k]; r != nil {
			r.lines = append(r.lines, e.Output)
		}
	case "pass":
		s.passed++
		if !isSubtest(e.Test) {
			s.forget(k)
		}
	case "skip":
		reason := "(no reason given)"
		if r := s.records[k]; r != nil {
			if m := skipReason(r.lines); m != "" {
				reason = m
			}
		}
		s.skipped = append(s.skipped, skip{e.Package, e.Test, reason})
		if !isSubtest(e.Test) {
			s.forget(k)
		}
	case "fail":
		s.failed = append(s.failed, k)
		if r := s.records[k]; r != nil {
			r.failed = true
		}
		if !isSubtest(e.Test) {
			s.printFailed(k, 0)
			s.forget(k)
		}
	}
}

// handlePackage prints a package's own lines as go test does (its "ok" or
// "FAIL" line, what TestMain printed), the output of tests it never
// finished (a crash, a timeout) before its FAIL line, and records a
// package that failed without a failed test (a build error, TestMain).
func (s *stream) handlePackage(e event) {
	switch e.Action {
	case "output":
		if strings.HasPrefix(e.Output, "FAIL") {
			s.flushUnfinished(e.Package)
		}
		if s.verbose || e.Output != "PASS\n" {
			io.WriteString(s.out, e.Output)
		}
	case "fail":
		s.flushUnfinished(e.Package)
		if !slices.ContainsFunc(s.failed, func(k testKey) bool { return k.pkg == e.Package }) {
			s.failed = append(s.failed, testKey{pkg: e.Package})
		}
	case "pass", "skip":
		for k := range s.records {
			if k.pkg == e.Package {
				delete(s.records, k)
			}
		}
	}
}

// flushUnfinished prints, as failed, the tests of pkg that started and
// never ended, and forgets every record of pkg.
func (s *stream) flushUnfinished(pkg string) {
	var top []string
	for k := range s.records {
		if k.pkg == pkg && !isSubtest(k.test) {
			top = append(top, k.test)
		}
	}
	slices.Sort(top)
	for _, name := range top {
		k := testKey{pkg, name}
		s.failed = append(s.failed, k)
		s.printFailed(k, 0)
	}
	for k := range s.records {
		if k.pkg == pkg {
			delete(s.records, k)
		}
	}
}

func isSubtest(name string) bool { return strings.Contains(name, "/") }

// forget drops a test's record and its subtests'.
func (s *stream) forget(k testKey) {
	if r := s.records[k]; r != nil {
		for _, c := range r.children {
			s.forget(testKey{k.pkg, c})
		}
	}
	delete(s.records, k)
}

// printFailed prints a failed test as go test does without -v: its
// "--- FAIL" line, its log, then its failed subtests, each level indented.
func (s *stream) printFailed(k testKey, depth int) {
	r := s.records[k]
	if r == nil || s.verbose {
		return
	}
	indent := strings.Repeat("    ", depth)
	var head, body []string
	for _, l := range r.lines {
		switch {
		case strings.HasPrefix(l, "=== "):
		case strings.HasPrefix(l, "--- "):
			head = append(head, indent+l)
		default:
			body = append(body, indent+l)
		}
	}
	if len(head) == 0 {
		head = []string{fmt.Sprintf("%s--- FAIL: %s (did not finish)\n", indent, k.test)}
	}
	io.WriteString(s.out, strings.Join(head, "")+strings.Join(body, ""))
	for _, c := range r.children {
		if cr := s.records[testKey{k.pkg, c}]; cr != nil && cr.failed {
			s.printFailed(testKey{k.pkg, c}, depth+1)
		}
	}
}

// logLine is the start of a t.Log/t.Skip message in a test's output:
// indentation, file:line, the message.
var logLine = regexp.MustCompile(`^(\s+)\S+\.go:\d+: ?(.*)$`)

// skipReason is the last message a test logged (t.Skip logs its
// arguments, then stops the test), continuation lines included.
func skipReason(lines []string) string {
	var msg []string
	indent := ""
	for _, l := range lines {
		l = strings.TrimRight(l, "\n")
		if m := logLine.FindStringSubmatch(l); m != nil {
			msg, indent = []string{m[2]}, m[1]
			continue
		}
		if msg != nil && strings.HasPrefix(l, indent+" ") && !strings.HasPrefix(strings.TrimSpace(l), "--- ") {
			msg = append(msg, strings.TrimSpace(l))
			continue
		}
		if !strings.HasPrefix(l, "--- ") && !strings.HasPrefix(l, "=== ") {
			msg = nil // output that is not part of the message
		}
	}
	return strings.Join(msg, "\n")
}
