package main

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"
)

// writeReport prints the summary: every skipped test grouped by reason,
// each reason marked allowed (with the allowlist line) or not, then the
// counts and the failed tests. It returns how many skips the allowlist
// does not allow. root says whether the tests ran as root.
func writeReport(w io.Writer, s *stream, a *allowlist, module string, root bool) (unallowed int) {
	short := func(pkg string) string {
		if module == "" {
			return pkg
		}
		return strings.TrimPrefix(pkg, module+"/")
	}
	type group struct {
		reason string
		entry  *allowEntry
		tests  map[string][]string // package -> tests
	}
	groups := map[string]*group{}
	for _, sk := range s.skipped {
		g := groups[sk.Reason]
		if g == nil {
			g = &group{reason: sk.Reason, entry: a.match(sk.Reason, root), tests: map[string][]string{}}
			groups[sk.Reason] = g
		}
		g.tests[short(sk.Package)] = append(g.tests[short(sk.Package)], sk.Test)
		if g.entry == nil {
			unallowed++
		}
	}
	sorted := make([]*group, 0, len(groups))
	for _, g := range groups {
		sorted = append(sorted, g)
	}
	// Allowed skips first, so the ones that need attention end up last,
	// next to the summary.
	slices.SortFunc(sorted, func(x, y *group) int {
		if (x.entry == nil) != (y.entry == nil) {
			if x.entry == nil {
				return 1
			}
			return -1
		}
		return cmp.Compare(x.reason, y.reason)
	})

	fmt.Fprintf(w, "\n=== Skipped tests: %d", len(s.skipped))
	if len(s.skipped) > 0 {
		fmt.Fprint(w, ", by reason")
	}
	fmt.Fprintln(w)
	for _, g := range sorted {
		mark := "[skipped]"
		switch {
		case g.entry != nil && g.entry.nonroot:
			mark = fmt.Sprintf("[allowed when not root, %s:%d]", a.path, g.entry.line)
		case g.entry != nil:
			mark = fmt.Sprintf("[allowed, %s:%d]", a.path, g.entry.line)
		case a != nil:
			mark = "[NOT ALLOWED]"
		}
		fmt.Fprintf(w, "%s %s\n", mark, strings.ReplaceAll(g.reason, "\n", "\n  | "))
		pkgs := make([]string, 0, len(g.tests))
		for p := range g.tests {
			pkgs = append(pkgs, p)
		}
		slices.Sort(pkgs)
		for _, p := range pkgs {
			fmt.Fprintf(w, "      %s: %s\n", p, strings.Join(g.tests[p], ", "))
		}
	}

	fmt.Fprintf(w, "=== %d passed, %d failed, %d skipped", s.passed, len(s.failed), len(s.skipped))
	switch {
	case a == nil:
		fmt.Fprintln(w, " (no skip allowlist given)")
	case len(s.skipped) == 0:
		fmt.Fprintln(w, ": nothing skipped")
	case unallowed == 0:
		fmt.Fprintf(w, ": every skip is on %s\n", a.path)
	default:
		fmt.Fprintf(w, ": %d allowed by %s, %d NOT on it\n", len(s.skipped)-unallowed, a.path, unallowed)
	}
	if len(s.failed) > 0 {
		names := make([]string, len(s.failed))
		for i, k := range s.failed {
			names[i] = short(k.pkg) + "." + k.test
			if k.test == "" {
				names[i] = short(k.pkg) + " (the package: a build error, TestMain, a crash)"
			}
		}
		slices.Sort(names)
		fmt.Fprintf(w, "=== FAILED: %s\n", strings.Join(names, ", "))
	}
	return unallowed
}
