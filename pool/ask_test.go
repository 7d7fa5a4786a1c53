package pool_test

import (
	"bytes"
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/pool"
)

// TestAskingIsBounded places many calls at once, on three real hosts of
// the embedded tailnet, while no host has answered the pool's question
// about their kernel yet: each host is asked once, by one goroutine, and
// every caller waits for that answer instead of starting goroutines of its
// own (the pool used to start one per host per call). Once the answers
// are cached, calls ask nothing and wait for nothing.
func TestAskingIsBounded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	laptop, _ := startTailnet(ctx, t, map[string]string{"gpu-a": allowLaptop, "gpu-b": allowLaptop, "gpu-c": allowLaptop})
	const hosts, callers = 3, 64

	var (
		asks      atomic.Int64
		asked     = make(chan string, 100)
		release   = make(chan struct{})
		waits     atomic.Int64
		allParked = make(chan struct{})
	)
	asking := func(host string) {
		asks.Add(1)
		asked <- host
		// Hold the question until every caller waits for it.
		select {
		case <-release:
		case <-ctx.Done():
		}
	}
	waiting := func() {
		if waits.Add(1) == callers {
			close(allParked)
		}
	}
	cfg := pool.WithAskHooks(pool.Config{
		Target: "tag:gpu", Network: laptop,
		RefreshInterval: 250 * time.Millisecond, ProbeTimeout: 3 * time.Second,
		DownAfter: time.Minute, ExplainTTL: time.Hour, // nothing is asked again
	}, asking, waiting)
	p, err := pool.Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	defer free() // before Close, which waits for the asks
	waitHosts(t, p, "three ready hosts", func(hs map[string]pool.HostInfo) bool {
		return len(hs) == hosts && hs["gpu-a"].State == pool.StateReady && hs["gpu-b"].State == pool.StateReady && hs["gpu-c"].State == pool.StateReady
	})

	wave := func(first bool) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, callers)
		for range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got, err := p.Compute(ctx, "relu", vec(4))
				if err == nil && len(got.Float32s()) != 4 {
					err = context.DeadlineExceeded
				}
				if err != nil {
					errs <- err
				}
			}()
		}
		// The first wave: every caller waits on a question held in the
		// hook, each host's asked by one goroutine.
		if first {
			seen := map[string]bool{}
			for len(seen) < hosts {
				select {
				case h := <-asked:
					seen[h] = true
				case <-ctx.Done():
					t.Fatalf("only %v asked", seen)
				}
			}
			select {
			case <-allParked:
			case <-ctx.Done():
				t.Fatalf("only %d callers waiting for an answer", waits.Load())
			}
			if n, at := askingGoroutines(); n > callers+hosts {
				t.Errorf("%d goroutines placing or asking for %d calls on %d hosts; want at most %d (a caller each, one asker per host)\n%s",
					n, callers, hosts, callers+hosts, at)
			} else {
				t.Logf("%d goroutines placing or asking for %d calls on %d hosts", n, callers, hosts)
			}
			free()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("a call failed: %v", err)
		}
	}
	wave(true)
	if n := asks.Load(); n != hosts {
		t.Errorf("%d questions asked for %d concurrent calls; want %d, one per host", n, callers, hosts)
	}
	waited := waits.Load()
	wave(false)
	if n, w := asks.Load(), waits.Load(); n != hosts || w != waited {
		t.Errorf("with the answers cached: %d questions asked (want %d), %d waits (want %d)", n, hosts, w, waited)
	}
}

// askingGoroutines counts the goroutines in placement's asking of the
// hosts' policies, and returns their stacks.
func askingGoroutines() (int, string) {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var n int
	var at bytes.Buffer
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte("gpumesh/pool.(*Pool).candidates")) || bytes.Contains(g, []byte("gpumesh/pool.(*host).ask")) {
			n++
			if n <= 3 {
				at.Write(g)
				at.WriteString("\n\n")
			}
		}
	}
	return n, at.String()
}
