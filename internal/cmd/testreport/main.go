// Command testreport runs `go test -json …` and prints its results the way
// `go test` does (a line per package, the output of failed tests), then
// lists every skipped test with its reason, grouped by reason and marked
// allowed or not by an allowlist of skip reasons (see .ci/allowed-skips
// for the format). Its exit status is the command's; with -strict, a run
// whose tests passed still exits 1 when a test skipped for a reason the
// allowlist does not name.
//
//	testreport [-allow FILE] [-strict] [-v] -- go test -json [flags] [packages]
//
// `make test` runs it; `.ci/run` adds -strict (make test SKIPS=strict).
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is the command: it returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("testreport", flag.ContinueOnError)
	fs.SetOutput(stderr)
	allowPath := fs.String("allow", "", "allowlist `file` of skip reasons")
	strict := fs.Bool("strict", false, "exit 1 when a test skips for a reason not on the allowlist")
	verbose := fs.Bool("v", false, "print every test's output, as go test -v does")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: testreport [-allow FILE] [-strict] [-v] -- go test -json [flags] [packages]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	var allow *allowlist
	if *allowPath != "" {
		var err error
		if allow, err = loadAllowlist(*allowPath); err != nil {
			fmt.Fprintf(stderr, "testreport: %v\n", err)
			return 2
		}
	}

	// Ctrl-C reaches the tests too; this process stays to report what ran.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt)
	defer signal.Stop(sig)

	cmd := exec.Command(fs.Arg(0), fs.Args()[1:]...)
	cmd.Stdin, cmd.Stderr = os.Stdin, stderr
	events, err := cmd.StdoutPipe()
	if err != nil {
		fmt.Fprintf(stderr, "testreport: %v\n", err)
		return 2
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(stderr, "testreport: start %s: %v\n", strings.Join(cmd.Args, " "), err)
		return 2
	}
	s := newStream(stdout, *verbose)
	rerr := s.read(events)
	werr := cmd.Wait()
	if rerr != nil {
		fmt.Fprintf(stderr, "testreport: reading the test events: %v\n", rerr)
	}

	unallowed := writeReport(stdout, s, allow, modulePath("go.mod"), os.Geteuid() == 0)
	code := exitCode(werr)
	switch {
	case code != 0:
		return code
	case rerr != nil:
		return 1
	case *strict && unallowed > 0:
		fmt.Fprintf(stderr, "testreport: %d test(s) skipped for a reason not on %s: fix the cause, or add the reason there with a comment saying why the skip is a decision\n",
			unallowed, allow.name())
		return 1
	}
	return 0
}

// exitCode is the command's exit status from Wait's error.
func exitCode(err error) int {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee) && ee.ExitCode() > 0:
		return ee.ExitCode()
	}
	return 1 // killed by a signal, or not waited for
}

// modulePath reads the module path from a go.mod file, to shorten package
// names in the report; "" if there is none.
func modulePath(gomod string) string {
	b, err := os.ReadFile(gomod)
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}
