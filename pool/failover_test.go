package pool_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/gpumesh/gpumesh/pool"
	"github.com/gpumesh/gpumesh/pool/pooltest"
)

// load runs callers goroutines calling relu on p until stop is closed,
// counting the calls done and collecting the errors.
type load struct {
	done atomic.Int64
	mu   sync.Mutex
	errs []error
	wg   sync.WaitGroup
	stop chan struct{}
	tick chan struct{} // a call finished
}

func startLoad(ctx context.Context, p *pool.Pool, callers int) *load {
	l := &load{stop: make(chan struct{}), tick: make(chan struct{}, 1)}
	for range callers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				if _, _, err := p.ComputeRequest(ctx, reluReq()); err != nil {
					l.mu.Lock()
					l.errs = append(l.errs, err)
					l.mu.Unlock()
				}
				l.done.Add(1)
				select {
				case l.tick <- struct{}{}:
				default:
				}
			}
		}()
	}
	return l
}

// waitDone waits until n more calls are done.
func (l *load) waitDone(t *testing.T, n int64) {
	t.Helper()
	want := l.done.Load() + n
	deadline := time.After(time.Minute)
	for l.done.Load() < want {
		select {
		case <-l.tick:
		case <-deadline:
			t.Fatalf("only %d of %d calls done after a minute", l.done.Load(), want)
		}
	}
}

func (l *load) finish() []error {
	close(l.stop)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.errs
}

// TestLostHost: a host vanishes under 30 callers. The stateless calls in
// flight on it, and those placed before it is found out, finish on the
// others: no caller sees an error. Its sessions fail with ErrHostLost
// naming it; the other hosts' sessions go on.
func TestLostHost(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	nw, hosts := simNet(t, 10*time.Millisecond, "gpu-a", "gpu-b", "gpu-c")
	p := startPool(t, fast("tag:gpu", nw))

	type open struct {
		s   *pool.Session
		buf pool.Buffer
	}
	var sessions []open
	for i := range 6 {
		s, err := p.OpenSession(t.Context(), "relu")
		if err != nil {
			t.Fatal(err)
		}
		b, err := s.Upload(t.Context(), []byte{byte(i), 1, 2, 3})
		if err != nil {
			t.Fatal(err)
		}
		sessions = append(sessions, open{s, b})
	}
	onC := 0
	for _, o := range sessions {
		if o.s.Host() == "gpu-c" {
			onC++
		}
	}
	if onC != 2 {
		t.Fatalf("%d of 6 sessions on gpu-c, want 2: sessions spread over the hosts", onC)
	}

	l := startLoad(t.Context(), p, 30)
	l.waitDone(t, 90)
	c := hosts["gpu-c"]
	c.Vanish()
	atC := c.Backend.(*pooltest.Sim).Calls()
	waitHosts(t, p, "gpu-c to be lost", state("gpu-c", pool.StateDown))
	l.waitDone(t, 90)
	if errs := l.finish(); len(errs) > 0 {
		t.Errorf("%d calls failed, want none; first: %v", len(errs), errs[0])
	}
	if n := c.Backend.(*pooltest.Sim).Calls(); n > atC+30 {
		t.Errorf("gpu-c ran %d calls after it vanished", n-atC)
	}

	for i, o := range sessions {
		got, err := o.s.Read(t.Context(), o.buf, 0, 0)
		if o.s.Host() != "gpu-c" {
			if err != nil || !bytes.Equal(got, []byte{byte(i), 1, 2, 3}) {
				t.Errorf("session %d on %s: read %v, %v", i, o.s.Host(), got, err)
			}
			continue
		}
		if !errors.Is(err, pool.ErrHostLost) || !strings.Contains(err.Error(), "gpu-c") {
			t.Errorf("session %d on gpu-c: read = %v, want ErrHostLost naming gpu-c", i, err)
		}
		if _, err := o.s.Compute(t.Context(), "relu", pool.BufferArg(o.buf, 1)); !errors.Is(err, pool.ErrHostLost) {
			t.Errorf("session %d on gpu-c: compute = %v, want ErrHostLost", i, err)
		}
		if err := o.s.Close(t.Context()); !errors.Is(err, pool.ErrHostLost) {
			t.Errorf("session %d on gpu-c: close = %v, want ErrHostLost", i, err)
		}
	}
	for _, o := range sessions {
		if o.s.Host() != "gpu-c" {
			if err := o.s.Close(t.Context()); err != nil {
				t.Error(err)
			}
		}
	}
	p.Close()
	nw.Close()
}

// TestStoppedHost: a host's endpoint stops (a crash: its connections are
// reset, new ones refused). Calls finish on the others.
func TestStoppedHost(t *testing.T) {
	nw, hosts := simNet(t, 10*time.Millisecond, "gpu-a", "gpu-b", "gpu-c")
	p := startPool(t, fast("tag:gpu", nw))
	l := startLoad(t.Context(), p, 30)
	l.waitDone(t, 90)
	hosts["gpu-b"].Stop()
	waitHosts(t, p, "gpu-b to be lost", state("gpu-b", pool.StateDown))
	l.waitDone(t, 90)
	if errs := l.finish(); len(errs) > 0 {
		t.Errorf("%d calls failed, want none; first: %v", len(errs), errs[0])
	}
}

// TestNotIdempotent: with no kernel declared idempotent, the calls in
// flight on a host that vanishes may have run, so they fail, saying the
// host was lost, instead of running again elsewhere.
func TestNotIdempotent(t *testing.T) {
	nw, hosts := simNet(t, 10*time.Millisecond, "gpu-a", "gpu-b")
	cfg := fast("tag:gpu", nw)
	cfg.Idempotent = func(string) bool { return false }
	p := startPool(t, cfg)
	l := startLoad(t.Context(), p, 10)
	l.waitDone(t, 40)
	hosts["gpu-b"].Vanish()
	waitHosts(t, p, "gpu-b to be lost", state("gpu-b", pool.StateDown))
	l.waitDone(t, 20)
	errs := l.finish()
	if len(errs) == 0 {
		t.Fatal("no call failed; the calls in flight on gpu-b should have")
	}
	for _, err := range errs {
		if !errors.Is(err, pool.ErrHostLost) || !strings.Contains(err.Error(), "gpu-b") {
			t.Errorf("a call failed with %v, want ErrHostLost naming gpu-b", err)
		}
	}
}

// TestHostReturns: a lost host is probed again and, once it answers, takes
// work again; a session opened on it before it was lost stays lost.
func TestHostReturns(t *testing.T) {
	nw, hosts := simNet(t, time.Millisecond, "gpu-a", "gpu-b")
	p := startPool(t, fast("tag:gpu", nw))
	var old *pool.Session
	for old == nil {
		s, err := p.OpenSession(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if s.Host() == "gpu-b" {
			old = s
		}
	}
	b := hosts["gpu-b"]
	b.Vanish()
	waitHosts(t, p, "gpu-b to be lost", state("gpu-b", pool.StateDown))
	b.Return()
	waitHosts(t, p, "gpu-b to be back", state("gpu-b", pool.StateReady))
	before := placed(p, "gpu-b")
	l := startLoad(t.Context(), p, 4)
	l.waitDone(t, 40)
	if errs := l.finish(); len(errs) > 0 {
		t.Fatal(errs[0])
	}
	if placed(p, "gpu-b") == before {
		t.Error("no call went to gpu-b after it came back")
	}
	if _, err := old.Alloc(t.Context(), 8); !errors.Is(err, pool.ErrHostLost) {
		t.Errorf("the session opened before gpu-b was lost: %v, want ErrHostLost", err)
	}
}
