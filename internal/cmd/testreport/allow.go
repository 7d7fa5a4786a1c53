package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
)

// allowlist is the skip reasons that are decisions (.ci/allowed-skips).
type allowlist struct {
	path    string
	entries []allowEntry
}

// allowEntry is one pattern, with the comment that says why.
type allowEntry struct {
	line    int
	re      *regexp.Regexp
	nonroot bool // allowed only when the tests ran as a user other than root
	why     string
}

func loadAllowlist(path string) (*allowlist, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("skip allowlist: %w", err)
	}
	defer f.Close()
	return parseAllowlist(path, f)
}

// parseAllowlist reads the format described at the top of
// .ci/allowed-skips: comment lines, then one pattern, per entry.
func parseAllowlist(path string, r io.Reader) (*allowlist, error) {
	a := &allowlist{path: path}
	var why []string
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "":
			why = nil
			continue
		case strings.HasPrefix(line, "#"):
			why = append(why, strings.TrimSpace(strings.TrimPrefix(line, "#")))
			continue
		case len(why) == 0:
			return nil, fmt.Errorf("%s:%d: pattern %q has no comment above it saying why the skip is a decision", path, n, line)
		}
		e := allowEntry{line: n, why: strings.Join(why, " ")}
		pattern, nonroot := strings.CutPrefix(line, "nonroot:")
		e.nonroot = nonroot
		var err error
		if e.re, err = regexp.Compile(strings.TrimSpace(pattern)); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		a.entries = append(a.entries, e)
		why = nil // the next pattern needs its own comment
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return a, nil
}

// match returns the entry that allows a skip with this reason, or nil.
func (a *allowlist) match(reason string, root bool) *allowEntry {
	if a == nil {
		return nil
	}
	for i, e := range a.entries {
		if e.re.MatchString(reason) && !(e.nonroot && root) {
			return &a.entries[i]
		}
	}
	return nil
}

func (a *allowlist) name() string {
	if a == nil {
		return "the allowlist (none given: -allow FILE)"
	}
	return a.path
}
