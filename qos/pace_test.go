package qos

import (
	"bytes"
	"context"
	"io"
	"sync"
	"testing"
	"time"
)

// TestLinkPacingServesInteractiveNext: with the link paced and bulk writers
// keeping chunks queued, an interactive chunk that arrives is the next one
// admitted: it waits for the link, never behind a queued bulk chunk.
func TestLinkPacingServesInteractiveNext(t *testing.T) {
	const chunk = 1 << 10
	s := newTestScheduler(t, Options{ChunkSize: chunk, Slots: 8, LinkRate: 256 << 10}) // 4 ms a chunk
	var (
		events   []string // "q:" and "g:" + class; guarded by s.mu (hooks run under it)
		bulkQ    = make(chan struct{}, 1024)
		interQ   = make(chan struct{}, 16)
		interDue = 0 // index in events of the interactive queueing; guarded by s.mu
	)
	s.onQueued = func(c string) {
		events = append(events, "q:"+c)
		if c == "interactive" {
			interDue = len(events)
			interQ <- struct{}{}
		} else {
			bulkQ <- struct{}{}
		}
	}
	s.onGrant = func(c string, _ int) { events = append(events, "g:"+c) }

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			s.write(ctx, io.Discard, func() string { return "bulk" }, bytes.Repeat([]byte("B"), 64*chunk))
		})
	}
	for range 3 { // every bulk writer has a chunk queued behind the link
		<-bulkQ
	}
	checked := 0
	for round := range 5 {
		if _, err := s.Writer(io.Discard, "interactive").Write(make([]byte, chunk)); err != nil {
			t.Fatal(err)
		}
		select {
		case <-interQ:
		default:
			continue // admitted at once: no bulk chunk was queued just then
		}
		checked++
		s.mu.Lock()
		next := ""
		for _, e := range events[interDue:] {
			if e[0] == 'g' {
				next = e
				break
			}
		}
		s.mu.Unlock()
		if next != "g:interactive" {
			t.Fatalf("round %d: after the interactive chunk queued, the next admission was %q", round, next)
		}
	}
	if checked == 0 {
		t.Error("the interactive chunk never had to queue: bulk did not saturate the paced link")
	}
	cancel()
	wg.Wait()
}

// TestLinkPacingRate: a paced scheduler admits no more than LinkRate
// allows after its burst. (A slow machine only admits less.)
func TestLinkPacingRate(t *testing.T) {
	const rate, chunk, total = 1 << 20, 4 << 10, 256 << 10
	s := newTestScheduler(t, Options{ChunkSize: chunk, LinkRate: rate})
	t0 := time.Now()
	if _, err := s.Writer(io.Discard, "bulk").Write(make([]byte, total)); err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(t0)
	// The first LinkBurst bytes (one chunk here) go at once; the rest at rate.
	if min := time.Duration(float64(total-2*chunk) / rate * float64(time.Second)); elapsed < min {
		t.Errorf("%d bytes admitted in %v, want at least %v at %d B/s", total, elapsed, min, rate)
	}
	if st := s.Stats(); st[1].Bytes != total {
		t.Errorf("bulk bytes %d, want %d", st[1].Bytes, total)
	}
	if s.LinkRate() != rate {
		t.Errorf("LinkRate() = %d", s.LinkRate())
	}
}
