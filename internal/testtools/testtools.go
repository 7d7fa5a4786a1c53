// Package testtools gives tests the programs they drive from outside: the
// tool binaries built into the repository's .tools/bin (grpcurl by `make
// grpcurl`), the gpumesh binary built from this checkout, and a `gpumesh up
// --forward` process joined to a test tailnet. A test that lacks a tool
// skips, saying which make target builds it.
//
// testtools imports no gpumesh package: it runs the binary as a user would.
package testtools

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Root returns the repository's root: the nearest directory above the
// test's working directory whose go.mod is gpumesh's.
func Root(tb testing.TB) string {
	tb.Helper()
	dir, err := os.Getwd()
	if err != nil {
		tb.Fatal(err)
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.HasPrefix(string(b), "module github.com/gpumesh/gpumesh\n") {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			tb.Fatalf("testtools: no gpumesh go.mod above the working directory")
		}
		dir = parent
	}
}

// Grpcurl returns the path of grpcurl: $GPUMESH_GRPCURL, or
// .tools/bin/grpcurl as `make grpcurl` builds it. The test skips when there
// is none.
func Grpcurl(tb testing.TB) string {
	tb.Helper()
	return tool(tb, "grpcurl", "GPUMESH_GRPCURL", "make grpcurl")
}

// Tailscaled returns the path of tailscaled: $GPUMESH_TAILSCALED, or
// .tools/bin/tailscaled as `make tailscaled` builds it. The test skips
// when there is none.
func Tailscaled(tb testing.TB) string {
	tb.Helper()
	return tool(tb, "tailscaled", "GPUMESH_TAILSCALED", "make tailscaled")
}

func tool(tb testing.TB, name, env, target string) string {
	tb.Helper()
	path := os.Getenv(env)
	if path == "" {
		path = filepath.Join(Root(tb), ".tools", "bin", name)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		tb.Skipf("needs %s at %s: run `%s` (or set %s)", name, path, target, env)
	}
	return path
}

// BuildGpumesh builds cmd/gpumesh from this checkout into a temporary
// directory and returns the binary's path. The build cache makes all but
// the first build of a run a link.
func BuildGpumesh(ctx context.Context, tb testing.TB) string {
	tb.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	bin := filepath.Join(tb.TempDir(), "gpumesh")
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", bin, "github.com/gpumesh/gpumesh/cmd/gpumesh")
	cmd.Dir = Root(tb)
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("go build gpumesh: %v\n%s", err, out)
	}
	return bin
}

// Up is a running `gpumesh up --forward 127.0.0.1:0=TARGET`: a node of a
// test tailnet in its own process, forwarding a loopback port to TARGET.
type Up struct {
	// Addr is the forwarder's address, e.g. "127.0.0.1:40123".
	Addr string

	cmd     *exec.Cmd
	rest    chan string // what it printed after "ready", once it exits
	exited  chan error
	stopped bool // Stop was called; only the test's goroutine uses it
}

// StartUp runs `gpumesh up` as hostname on the tailnet of controlURL,
// forwarding a loopback port to target ("gpu-host" or "gpu-host:50051"),
// and returns once it is ready. Call Stop to check that it leaves cleanly;
// otherwise it is interrupted when the test ends.
func StartUp(ctx context.Context, tb testing.TB, bin, controlURL, hostname, target string) *Up {
	tb.Helper()
	cmd := exec.CommandContext(ctx, bin, "up", "--control-url", controlURL, "--state-dir", tb.TempDir(),
		"--hostname", hostname, "--ephemeral", "--forward", "127.0.0.1:0="+target)
	// As overlaytest does in-process: a namespace with only loopback still
	// counts as a network that is up. The node makes itself known in a
	// runtime dir of the test's, not the machine's (diag.RuntimeDir).
	cmd.Env = append(os.Environ(), "TS_ASSUME_NETWORK_UP_FOR_TEST=1", "XDG_RUNTIME_DIR="+tb.TempDir())
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	u := &Up{cmd: cmd, rest: make(chan string, 1), exited: make(chan error, 1)}
	lines := bufio.NewScanner(stdout)
	forwarding := regexp.MustCompile(`^gpumesh: forwarding (127\.0\.0\.1:\d+) -> `)
	var output []string
	for lines.Scan() {
		output = append(output, lines.Text())
		if m := forwarding.FindStringSubmatch(lines.Text()); m != nil {
			u.Addr = m[1]
		}
		if strings.Contains(lines.Text(), "ready") {
			break
		}
	}
	go func() {
		var more []string
		for lines.Scan() {
			more = append(more, lines.Text())
		}
		u.rest <- strings.Join(more, "\n")
		u.exited <- cmd.Wait()
	}()
	if u.Addr == "" {
		cmd.Process.Kill()
		<-u.rest
		tb.Fatalf("gpumesh up printed %q, no forwarding line (exit: %v)", output, <-u.exited)
	}
	tb.Cleanup(func() {
		if !u.stopped { // the test failed early, or its context killed the process
			u.stopped = true
			u.cmd.Process.Signal(os.Interrupt)
			<-u.rest
			<-u.exited
		}
	})
	return u
}

// Stop interrupts the process and checks that it left cleanly.
func (u *Up) Stop(tb testing.TB) {
	tb.Helper()
	if err := u.stop(); err != nil {
		tb.Error(err)
	}
}

func (u *Up) stop() error {
	u.stopped = true
	if err := u.cmd.Process.Signal(os.Interrupt); err != nil {
		return fmt.Errorf("interrupt gpumesh up: %w", err)
	}
	more := <-u.rest
	if err := <-u.exited; err != nil {
		return fmt.Errorf("gpumesh up after an interrupt: %w", err)
	}
	if !strings.Contains(more, "shutting down") {
		return errors.New("gpumesh up ended without saying so: " + more)
	}
	return nil
}
