package qos

import (
	"context"
	"io"
	"slices"
	"sync"
	"testing"
	"time"
)

// link models a bottleneck: one write at a time, each taking its bytes'
// transmission time at bytesPerSec.
type link struct {
	mu          sync.Mutex
	bytesPerSec float64
}

func (l *link) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	time.Sleep(time.Duration(float64(len(p)) / l.bytesPerSec * float64(time.Second)))
	return len(p), nil
}

// p99Interactive times n interactive writes of 256 bytes to w while
// `bulk` writers push 64 KiB writes into bulkW.
func p99Interactive(n, bulk int, w, bulkW io.Writer) time.Duration {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	started := make(chan struct{}, bulk)
	for range bulk {
		wg.Go(func() {
			buf := make([]byte, 64<<10)
			started <- struct{}{}
			for ctx.Err() == nil {
				bulkW.Write(buf)
			}
		})
	}
	for range bulk {
		<-started
	}
	msg := make([]byte, 256)
	lat := make([]time.Duration, n)
	for i := range lat {
		t0 := time.Now()
		w.Write(msg)
		lat[i] = time.Since(t0)
	}
	cancel()
	wg.Wait()
	slices.Sort(lat)
	return lat[min(len(lat)-1, len(lat)*99/100)]
}

// BenchmarkInteractiveUnderBulk reports the p99 latency of small
// interactive writes over a 50 MB/s link, idle and with four bulk writers
// saturating it, for the raw path (everyone writes to the link) and through
// the scheduler (interactive above bulk, 16 KiB chunks). Run with e.g.
// -benchtime=300x; each iteration is one interactive write per phase.
func BenchmarkInteractiveUnderBulk(b *testing.B) {
	n := max(b.N, 100)
	l := &link{bytesPerSec: 50e6}
	s, err := NewScheduler(testClasses, Options{})
	if err != nil {
		b.Fatal(err)
	}
	si, sb := s.Writer(l, "interactive"), s.Writer(l, "bulk")

	rawIdle := p99Interactive(n, 0, l, l)
	rawLoaded := p99Interactive(n, 4, l, l)
	schedIdle := p99Interactive(n, 0, si, sb)
	schedLoaded := p99Interactive(n, 4, si, sb)

	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	b.ReportMetric(us(rawIdle), "raw-idle-p99-µs")
	b.ReportMetric(us(rawLoaded), "raw-loaded-p99-µs")
	b.ReportMetric(us(schedIdle), "sched-idle-p99-µs")
	b.ReportMetric(us(schedLoaded), "sched-loaded-p99-µs")
	b.ReportMetric(float64(rawLoaded)/float64(rawIdle), "raw-loaded/idle")
	b.ReportMetric(float64(schedLoaded)/float64(schedIdle), "sched-loaded/idle")
	b.ReportMetric(float64(schedIdle)/float64(rawIdle), "sched-idle/raw-idle")
}

// BenchmarkWaitUncontended is the scheduler's cost on an idle path.
func BenchmarkWaitUncontended(b *testing.B) {
	s, err := NewScheduler(testClasses, Options{})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		r, err := s.Wait(ctx, "interactive", 1024)
		if err != nil {
			b.Fatal(err)
		}
		r()
	}
}
