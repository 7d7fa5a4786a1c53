package engine_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/gpumesh/gpumesh/policy"
	"github.com/gpumesh/gpumesh/qos/engine"
)

// writePolicy writes a policy (JSON) whose rule for the laptop names class, with
// that class declared (EF, priority 0).
func writePolicy(t *testing.T, path, class string) {
	t.Helper()
	src := fmt.Sprintf(`{"version": 1, "class": {%q: {"dscp": "EF", "priority": 0}},
  "rule": {"laptop": {"subjects": ["laptop"], "kernels": ["*"], "gpus": ["*"], "class": %q}}}`, class, class)
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
}

// bytesIn is what the engine's scheduler admitted in class so far.
func bytesIn(e *engine.Engine, class string) int64 {
	for _, c := range e.Status().Classes {
		if c.Name == class {
			return c.Bytes
		}
	}
	return -1
}

// TestConnFollowsReload: a caller's open connection is scheduled in its
// rule's class; a reload that renames the class moves it, so its next
// writes are counted in the new class; the engine closes once, leaving
// no goroutine behind.
func TestConnFollowsReload(t *testing.T) {
	defer goleak.VerifyNone(t)
	path := filepath.Join(t.TempDir(), "policy.json")
	writePolicy(t, path, "gpu")
	store, err := policy.NewStore(path, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	e, err := engine.Start(engine.Config{Policy: store})
	if err != nil {
		t.Fatal(err)
	}

	near, far := net.Pipe()
	var wg sync.WaitGroup
	wg.Go(func() { io.Copy(io.Discard, far) })
	c := e.Conn(near, policy.Subject{Node: "laptop"})
	write := func() {
		t.Helper()
		if _, err := c.Write(make([]byte, 1000)); err != nil {
			t.Fatal(err)
		}
	}

	write()
	if n := bytesIn(e, "gpu"); n < 1000 {
		t.Fatalf("class gpu admitted %d bytes, want the 1000 written", n)
	}
	writePolicy(t, path, "fast")
	if err := store.Reload(); err != nil {
		t.Fatal(err)
	}
	write()
	if n := bytesIn(e, "fast"); n < 1000 {
		t.Errorf("after the rename class fast admitted %d bytes, want the 1000 written: %+v", n, e.Status().Classes)
	}

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	far.Close()
	wg.Wait()
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close = %v, want net.ErrClosed", err)
	}
}
