package pool_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/pool"
)

// The pool's benchmarks run GPU hosts with a SIMULATED GPU (pooltest.Sim:
// one kernel at a time, 10ms each, no computation) on a loopback stand-in
// for the overlay, so that what they measure is placement, not this
// machine's CPUs: real kernels on a 2-core machine would contend for the
// same cores whichever host ran them.
const (
	simKernel = 10 * time.Millisecond
	callers   = 30
)

// benchCfg are the pool's timings in benchmarks: a host that stops
// answering is lost within about 2s.
func benchCfg(target string, nw pool.Network) pool.Config {
	return pool.Config{
		Target: target, Network: nw,
		RefreshInterval: 250 * time.Millisecond, ProbeTimeout: time.Second,
		DownAfter: 2 * time.Second, RetryInterval: time.Second,
	}
}

// run makes calls stateless calls through p from callers goroutines and
// returns how long they took and how many failed.
func run(ctx context.Context, p *pool.Pool, calls int, during func(done int)) (time.Duration, []error) {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		next int // calls handed out; guarded by mu
	)
	t0 := time.Now()
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= calls {
					return
				}
				if during != nil {
					during(i)
				}
				if _, _, err := p.ComputeRequest(ctx, reluReq()); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return time.Since(t0), errs
}

// BenchmarkPoolScale: 30 callers of a 10ms simulated kernel through a
// pool of 3 hosts, against the same through a pool of one host in the same
// run. x-one-host is the throughput ratio (3 at best).
func BenchmarkPoolScale(b *testing.B) {
	nw, _ := simNet(b, simKernel, "gpu-a", "gpu-b", "gpu-c")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	three := startPool(b, benchCfg("tag:gpu", nw))
	one := startPool(b, benchCfg("gpu-a", nw))
	const calls = 300
	var d1, d3 time.Duration
	for b.Loop() {
		d, errs := run(ctx, one, calls, nil)
		d1 += d
		if len(errs) > 0 {
			b.Fatal(errs[0])
		}
		d, errs = run(ctx, three, calls, nil)
		d3 += d
		if len(errs) > 0 {
			b.Fatal(errs[0])
		}
	}
	n := float64(b.N * calls)
	b.ReportMetric(n/d1.Seconds(), "calls/s-1host")
	b.ReportMetric(n/d3.Seconds(), "calls/s-3hosts")
	b.ReportMetric(d1.Seconds()/d3.Seconds(), "x-one-host")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkPoolQueue: gpu-b also serves another caller that keeps 10
// calls queued there, so that its queue is twice the others' when the
// pool's 30 callers spread evenly. The pool sends it fewer calls; share-*
// are the fractions of the pool's calls each host ran, b/a the ratio of
// gpu-b's to gpu-a's (0.5 would be in proportion to the queues).
func BenchmarkPoolQueue(b *testing.B) {
	nw, hosts := simNet(b, simKernel, "gpu-a", "gpu-b", "gpu-c")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	p := startPool(b, benchCfg("tag:gpu", nw))
	other, err := gpusvc.NewClient(hosts["gpu-b"].Addr.String()+":50051", nw.Dial)
	if err != nil {
		b.Fatal(err)
	}
	defer other.Close()
	bgCtx, stopBG := context.WithCancel(ctx)
	var bg sync.WaitGroup
	for range 10 {
		bg.Add(1)
		go func() {
			defer bg.Done()
			for bgCtx.Err() == nil {
				other.ComputeRequest(bgCtx, reluReq())
			}
		}()
	}
	defer func() { stopBG(); bg.Wait() }()

	before := placedAll(p)
	const calls = 300
	for b.Loop() {
		if _, errs := run(ctx, p, calls, nil); len(errs) > 0 {
			b.Fatal(errs[0])
		}
	}
	after := placedAll(p)
	total := float64(b.N * calls)
	share := func(h string) float64 { return float64(after[h]-before[h]) / total }
	b.ReportMetric(share("gpu-a"), "share-a")
	b.ReportMetric(share("gpu-b"), "share-b")
	b.ReportMetric(share("gpu-c"), "share-c")
	b.ReportMetric(share("gpu-b")/share("gpu-a"), "b/a")
	b.ReportMetric(0, "ns/op")
}

func placedAll(p *pool.Pool) map[string]uint64 {
	m := make(map[string]uint64)
	for _, h := range p.Hosts() {
		m[h.Name] = h.Placed
	}
	return m
}

// BenchmarkPoolKill: 30 callers, 3 hosts, one session on each; a third of
// the way through, gpu-c vanishes (its packets dropped, as in a power
// loss). failures is the stateless calls that failed (0 expected: they
// finish on gpu-a and gpu-b); sessions-on-c is how many of the three
// sessions were on gpu-c (1: sessions spread) and lost-clearly the
// fraction of those whose next call failed with ErrHostLost naming gpu-c
// (1 expected; the others' sessions must go on working); x-no-kill is the
// run's throughput against the same run without a kill (gpu-c's calls
// wait up to DownAfter before they move).
func BenchmarkPoolKill(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	const calls = 600
	var failures, onC, lost int
	var dKill, dNone time.Duration
	for b.Loop() {
		for _, kill := range []bool{false, true} {
			nw, hosts := simNet(b, simKernel, "gpu-a", "gpu-b", "gpu-c")
			p := startPool(b, benchCfg("tag:gpu", nw))
			var sessions []*pool.Session
			for range 3 {
				s, err := p.OpenSession(ctx)
				if err != nil {
					b.Fatal(err)
				}
				sessions = append(sessions, s)
			}
			var once sync.Once
			during := func(i int) {
				if kill && i == calls/3 {
					once.Do(hosts["gpu-c"].Vanish)
				}
			}
			d, errs := run(ctx, p, calls, during)
			if !kill {
				dNone += d
				p.Close()
				nw.Close()
				continue
			}
			dKill += d
			failures += len(errs)
			waitHosts(b, p, "gpu-c to be lost", state("gpu-c", pool.StateDown))
			for _, s := range sessions {
				_, err := s.Alloc(ctx, 64)
				switch {
				case s.Host() != "gpu-c" && err == nil:
				case s.Host() == "gpu-c" && errors.Is(err, pool.ErrHostLost):
					onC++
					lost++
				case s.Host() == "gpu-c":
					onC++
					b.Errorf("session on gpu-c: %v, want ErrHostLost", err)
				default:
					b.Errorf("session on %s: %v", s.Host(), err)
				}
			}
			p.Close()
			nw.Close()
		}
	}
	b.ReportMetric(float64(failures)/float64(b.N), "failures")
	b.ReportMetric(float64(lost)/float64(max(onC, 1)), "lost-clearly")
	b.ReportMetric(float64(onC)/float64(b.N), "sessions-on-c")
	b.ReportMetric(dNone.Seconds()/dKill.Seconds(), "x-no-kill")
	b.ReportMetric(0, "ns/op")
}
