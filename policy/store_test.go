package policy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// open allows laptop to call relu; tight allows it nothing.
const (
	openPolicy = `version = 1
rule "laptop" {
  subjects       = ["laptop"]
  gpus           = ["*"]
  kernels        = ["relu"]
  max_concurrent = 4
}
test "laptop" {
  subject = { node = "laptop" }
  kernel  = "relu"
  expect  = "allow"
}
`
	tightPolicy = `version = 1
rule "laptop" {
  subjects       = ["laptop"]
  gpus           = ["*"]
  kernels        = ["saxpy"]
  max_concurrent = 1
}
test "laptop" {
  subject = { node = "laptop" }
  kernel  = "relu"
  expect  = "deny"
}
`
	brokenPolicy     = "version = 1\nrule \"laptop\" {\n  subjects = [\"laptop\"\n"
	failingTestsText = `version = 1
test "laptop" {
  subject = { node = "laptop" }
  kernel  = "relu"
  expect  = "allow"
}
`
)

var relu = Request{Kernel: "relu"}

// writeFile replaces path the way editors do: write a temporary file, then
// rename it over the old one.
func writeFile(t testing.TB, path, src string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// logRecorder is a logf that also delivers lines on a channel.
type logRecorder struct{ lines chan string }

func newLog() *logRecorder { return &logRecorder{lines: make(chan string, 1000)} }

func (l *logRecorder) logf(format string, args ...any) {
	select {
	case l.lines <- fmt.Sprintf(format, args...):
	default:
	}
}

// waitLine waits for a line containing s.
func (l *logRecorder) waitLine(t *testing.T, s string) string {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case line := <-l.lines:
			if strings.Contains(line, s) {
				return line
			}
		case <-timeout:
			t.Fatalf("no log line containing %q", s)
		}
	}
}

func TestStoreReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.hcl")
	writeFile(t, path, openPolicy)
	log := newLog()
	st, err := NewStore(path, log.logf)
	if err != nil {
		t.Fatal(err)
	}
	first := st.Current()
	if !first.Evaluate(Subject{Node: "laptop"}, relu).Allow {
		t.Fatal("open policy denies laptop")
	}

	// A valid reload applies, and says so.
	updated := st.Updated()
	writeFile(t, path, tightPolicy)
	if err := st.Reload(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-updated:
	default:
		t.Error("Updated channel not closed by a reload")
	}
	second := st.Current()
	if d := second.Evaluate(Subject{Node: "laptop"}, relu); d.Allow {
		t.Errorf("tightened policy still allows: %+v", d)
	}
	// A caller still holding the old policy is unaffected.
	if !first.Evaluate(Subject{Node: "laptop"}, relu).Allow {
		t.Error("the old policy changed under its holder")
	}
	log.waitLine(t, "loaded")

	// Invalid reloads keep the policy in force and return the diagnostics.
	for _, tc := range []struct {
		name, src string
		check     func(error) bool
	}{
		{"syntax error", brokenPolicy, func(err error) bool { var pe *ParseError; return errors.As(err, &pe) }},
		{"failing tests", failingTestsText, func(err error) bool { return errors.Is(err, ErrTestsFailed) }},
		{"empty file", "", func(err error) bool { return strings.Contains(err.Error(), "Missing version") }},
	} {
		writeFile(t, path, tc.src)
		err := st.Reload()
		if err == nil || !tc.check(err) {
			t.Errorf("%s: Reload = %v", tc.name, err)
		}
		if st.Current() != second {
			t.Errorf("%s: the policy in force changed", tc.name)
		}
		log.waitLine(t, "rejected")
	}
	os.Remove(path)
	if err := st.Reload(); err == nil || st.Current() != second {
		t.Errorf("missing file: Reload = %v", err)
	}
}

func TestNewStoreRefusesBadPolicies(t *testing.T) {
	dir := t.TempDir()
	for name, src := range map[string]string{"broken.hcl": brokenPolicy, "failing.hcl": failingTestsText, "empty.json": "{}"} {
		path := filepath.Join(dir, name)
		writeFile(t, path, src)
		if st, err := NewStore(path, nil); err == nil {
			t.Errorf("%s: NewStore succeeded: %v", name, st.Current().Summary())
		}
	}
	if _, err := NewStore(filepath.Join(dir, "absent.hcl"), nil); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("absent file: %v", err)
	}
	_, err := NewStore(filepath.Join(dir, "failing.hcl"), nil)
	if !errors.Is(err, ErrTestsFailed) || !strings.Contains(err.Error(), `failing.hcl:2:1: test "laptop": want allow, got deny`) {
		t.Errorf("failing tests: %v", err)
	}
}

// TestStoreConcurrentReload: readers evaluating in a loop while reloads swap
// valid and invalid files never see a nil policy or a decision that neither
// valid policy makes. Run with -race.
func TestStoreConcurrentReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.hcl")
	writeFile(t, path, openPolicy)
	st, err := NewStore(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[Decision]bool{}
	for _, src := range []string{openPolicy, tightPolicy} {
		want[mustParse(t, "x.hcl", src).Evaluate(Subject{Node: "laptop"}, relu)] = true
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			for n := 0; ; n++ {
				select {
				case <-stop:
					if n == 0 {
						errs <- errors.New("reader never ran")
					}
					return
				default:
				}
				p := st.Current()
				if p == nil {
					errs <- errors.New("Current returned nil")
					return
				}
				if d := p.Evaluate(Subject{Node: "laptop"}, relu); !want[d] {
					errs <- fmt.Errorf("unexpected decision %+v", d)
					return
				}
			}
		})
	}
	srcs := []string{tightPolicy, brokenPolicy, openPolicy, failingTestsText}
	for i := range 40 {
		src := srcs[i%len(srcs)]
		writeFile(t, path, src)
		err := st.Reload()
		if valid := src == tightPolicy || src == openPolicy; valid != (err == nil) {
			t.Errorf("reload %d: valid=%v err=%v", i, valid, err)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestStoreWatch: editing the file (by rename, as editors do) reloads it;
// an invalid edit is rejected and the old policy stays; Watch returns when
// its context ends and leaves no goroutine behind.
func TestStoreWatch(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.hcl")
	writeFile(t, path, openPolicy)
	log := newLog()
	st, err := NewStore(path, log.logf)
	if err != nil {
		t.Fatal(err)
	}
	st.debounce = 10 * time.Millisecond

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- st.Watch(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	}()

	// Whether Watch has added its watch before this write or not, the edit
	// is applied: Watch rereads the file once it watches.
	updated := st.Updated()
	writeFile(t, path, tightPolicy)
	deadline := time.After(20 * time.Second)
	for waiting := true; waiting; {
		select {
		case <-updated:
			waiting = false
		case <-deadline:
			t.Fatal("the watched edit was not applied")
		}
	}
	if st.Current().Evaluate(Subject{Node: "laptop"}, relu).Allow {
		t.Fatal("tightened policy not in force")
	}
	before := st.Current()

	writeFile(t, path, brokenPolicy)
	line := log.waitLine(t, "rejected")
	if !strings.Contains(line, "policy.hcl:") {
		t.Errorf("rejection does not carry the diagnostics' positions: %s", line)
	}
	if st.Current() != before {
		t.Error("an invalid edit replaced the policy")
	}

	// In-place writes (no rename) are seen too.
	updated = st.Updated()
	if err := os.WriteFile(path, []byte(openPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case <-updated:
	case <-time.After(20 * time.Second):
		t.Fatal("in-place write not applied")
	}
	if !st.Current().Evaluate(Subject{Node: "laptop"}, relu).Allow {
		t.Error("reopened policy not in force")
	}
}

func TestStoreWatchMissingDir(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.hcl")
	writeFile(t, path, openPolicy)
	st, err := NewStore(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	st.path = filepath.Join(t.TempDir(), "gone", "policy.hcl")
	if err := st.Watch(context.Background()); err == nil {
		t.Error("Watch of a missing directory succeeded")
	}
}
