package qos

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/gpumesh/gpumesh/dscp"
)

func TestMain(m *testing.M) {
	if os.Getenv("GMQ_E2E_NETNS") != "" {
		// The child process of TestTsnetOuterDSCP runs Tailscale, whose
		// background goroutines are not ours to check.
		os.Exit(m.Run())
	}
	goleak.VerifyTestMain(m)
}

var testClasses = []Class{
	{Name: "bulk", DSCP: dscp.AF11, Priority: 5},
	{Name: "interactive", DSCP: dscp.AF41, Priority: 0},
}

func newTestScheduler(t *testing.T, opts Options) *Scheduler {
	t.Helper()
	s, err := NewScheduler(testClasses, opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// gateSink records the first byte of every write and blocks each write
// until the test lets it through.
type gateSink struct {
	entered chan byte     // a write began; buffered
	proceed chan struct{} // one receive per write; closed to drain
}

func newGateSink() *gateSink {
	return &gateSink{entered: make(chan byte, 1024), proceed: make(chan struct{})}
}

func (g *gateSink) Write(p []byte) (int, error) {
	g.entered <- p[0]
	<-g.proceed
	return len(p), nil
}

// TestInteractiveBehindAtMostOneBulkChunk: with several bulk writers keeping
// the scheduler saturated, an interactive write that arrives is admitted as
// soon as the one bulk chunk being written completes.
func TestInteractiveBehindAtMostOneBulkChunk(t *testing.T) {
	s := newTestScheduler(t, Options{ChunkSize: 1024})
	queued := make(chan string, 4096)
	s.onQueued = func(c string) { queued <- c }
	sink := newGateSink()

	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(sink.proceed) // drain: let every remaining write through
	for range 3 {
		wg.Go(func() {
			if _, err := s.Writer(sink, "bulk").Write(bytes.Repeat([]byte("B"), 64<<10)); err != nil {
				t.Error(err)
			}
		})
	}
	if b := <-sink.entered; b != 'B' {
		t.Fatalf("first write %q, want bulk", b)
	}
	waitQueued := func(class string, n int) {
		for n > 0 {
			if <-queued == class {
				n--
			}
		}
	}
	waitQueued("bulk", 2) // the other two bulk writers wait behind the one writing

	for round := range 5 {
		done := make(chan struct{})
		wg.Go(func() {
			defer close(done)
			if _, err := s.Writer(sink, "interactive").Write([]byte("I-call")); err != nil {
				t.Error(err)
			}
		})
		waitQueued("interactive", 1)
		sink.proceed <- struct{}{} // the bulk chunk in flight completes
		if b := <-sink.entered; b != 'I' {
			t.Fatalf("round %d: after one bulk chunk the next write is %q, want the interactive one", round, b)
		}
		sink.proceed <- struct{}{}
		<-done
		if b := <-sink.entered; b != 'B' {
			t.Fatalf("round %d: bulk did not resume, got %q", round, b)
		}
	}
	st := s.Stats()
	if st[0].Name != "interactive" || st[0].Chunks != 5 {
		t.Errorf("interactive stats %+v, want 5 chunks", st[0])
	}
}

// TestMinShareNoStarvation: with interactive chunks saturating the
// scheduler, a waiting bulk chunk is admitted once every 1/MinShare chunks.
func TestMinShareNoStarvation(t *testing.T) {
	tests := []struct {
		share      float64
		nI, nB     int
		wantPeriod int // bulk admitted after this many interactive chunks
	}{
		{share: 0.1, nI: 50, nB: 5, wantPeriod: 9},
		{share: 0.25, nI: 30, nB: 5, wantPeriod: 3},
		{share: 0.5, nI: 10, nB: 10, wantPeriod: 1},
	}
	for _, tt := range tests {
		s := newTestScheduler(t, Options{MinShare: tt.share})
		queued := make(chan string, 256)
		s.onQueued = func(c string) { queued <- c }
		var order []string // guarded by s.mu (appended by the hook)
		s.onGrant = func(c string, _ int) { order = append(order, c[:1]) }

		gate, err := s.Wait(context.Background(), "bulk", 1) // hold the only slot
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for i := range tt.nI + tt.nB {
			class := "interactive"
			if i >= tt.nI {
				class = "bulk"
			}
			wg.Go(func() {
				release, err := s.Wait(context.Background(), class, 1000)
				if err != nil {
					t.Error(err)
					return
				}
				release()
			})
		}
		for range tt.nI + tt.nB {
			<-queued
		}
		gate()
		wg.Wait()

		var want strings.Builder
		want.WriteString("b")
		nI, nB := tt.nI, tt.nB
		for nI > 0 || nB > 0 {
			k := min(nI, tt.wantPeriod)
			if nB == 0 {
				k = nI
			}
			want.WriteString(strings.Repeat("i", k))
			nI -= k
			if nB > 0 {
				want.WriteString("b")
				nB--
			}
		}
		if got := strings.Join(order, ""); got != want.String() {
			t.Errorf("share %v: admission order\n got %s\nwant %s", tt.share, got, want.String())
		}
	}
}

func TestWaitCancelledFreesQueue(t *testing.T) {
	s := newTestScheduler(t, Options{})
	queued := make(chan string, 8)
	s.onQueued = func(c string) { queued <- c }
	gate, err := s.Wait(context.Background(), "bulk", 1)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := s.Wait(ctx, "interactive", 10)
		errc <- err
	}()
	<-queued
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait after cancel: %v, want context.Canceled", err)
	}
	if q := s.Stats()[0].Queued; q != 0 {
		t.Fatalf("interactive still has %d queued", q)
	}
	gate()
	gate() // second call does nothing
	r1, err := s.Wait(context.Background(), "interactive", 10)
	if err != nil {
		t.Fatal(err)
	}
	r1()
	if s.free != 1 {
		t.Fatalf("free slots %d, want 1", s.free)
	}
}

func TestRateCap(t *testing.T) {
	s, err := NewScheduler([]Class{
		{Name: "slow", DSCP: dscp.CS1, Rate: 1, Burst: 100},
		{Name: "fast", DSCP: dscp.CS0, Rate: 1 << 40, Burst: 100},
	}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if n := s.ChunkSize("slow"); n != 100 {
		t.Errorf("chunk size %d, want burst 100", n)
	}
	r, err := s.Wait(context.Background(), "slow", 100) // the burst
	if err != nil {
		t.Fatal(err)
	}
	r()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The next 100 bytes need 100 s of tokens: the limiter refuses at once.
	if _, err := s.Wait(ctx, "slow", 100); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("capped Wait: %v, want DeadlineExceeded", err)
	}
	// A chunk larger than the burst is admitted in burst-sized token steps.
	r, err = s.Wait(context.Background(), "fast", 250)
	if err != nil {
		t.Fatal(err)
	}
	r()
}

// TestUnknownClass: a write naming no class, or one the scheduler lacks,
// is admitted and counted in the default class: the least urgent one
// without Options.DefaultClass, the named one with it.
func TestUnknownClass(t *testing.T) {
	s := newTestScheduler(t, Options{})
	r, err := s.Wait(context.Background(), "nope", 1)
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	r()
	if _, err := s.Writer(io.Discard, "").Write([]byte("xy")); err != nil {
		t.Errorf("Write: %v", err)
	}
	if got := bytesOf(s); got["bulk"] != 3 || got["interactive"] != 0 {
		t.Errorf("bytes per class %v, want 3 in bulk (the least urgent)", got)
	}
	if c := s.Class("nope"); c.Name != "bulk" {
		t.Errorf("Class(nope) = %+v, want bulk", c)
	}

	s, err = NewScheduler(testClasses, Options{DefaultClass: "interactive"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Writer(io.Discard, "nope").Write([]byte("x")); err != nil {
		t.Errorf("Write: %v", err)
	}
	if got := bytesOf(s); got["interactive"] != 1 {
		t.Errorf("bytes per class %v, want 1 in interactive (Options.DefaultClass)", got)
	}
	if _, err := NewScheduler(testClasses, Options{DefaultClass: "video"}); !errors.Is(err, ErrNoDefaultClass) {
		t.Errorf("NewScheduler without its default class: %v, want ErrNoDefaultClass", err)
	}
}

// bytesOf returns the bytes admitted per class.
func bytesOf(s *Scheduler) map[string]int64 {
	m := make(map[string]int64)
	for _, st := range s.Stats() {
		m[st.Name] = st.Bytes
	}
	return m
}

func TestWriterChunksAndCounts(t *testing.T) {
	s := newTestScheduler(t, Options{ChunkSize: 1000})
	var buf bytes.Buffer
	cw := &countWriter{w: &buf}
	msg := bytes.Repeat([]byte("x"), 2500)
	n, err := s.Writer(cw, "bulk").Write(msg)
	if err != nil || n != len(msg) {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if cw.writes != 3 || !bytes.Equal(buf.Bytes(), msg) {
		t.Fatalf("%d writes, %d bytes; want 3 writes of the message", cw.writes, buf.Len())
	}
	st := s.Stats()[1]
	if st.Bytes != 2500 || st.Chunks != 3 {
		t.Fatalf("bulk stats %+v", st)
	}
}

type countWriter struct {
	w      io.Writer
	writes int
}

func (c *countWriter) Write(p []byte) (int, error) { c.writes++; return c.w.Write(p) }

func TestConn(t *testing.T) {
	s := newTestScheduler(t, Options{})
	queued := make(chan string, 8)
	s.onQueued = func(c string) { queued <- c }

	a, b := net.Pipe()
	defer b.Close()
	ca := s.Conn(a, "interactive")
	go func() { io.Copy(io.Discard, b) }()
	if _, err := ca.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}

	gate, err := s.Wait(context.Background(), "bulk", 1)
	if err != nil {
		t.Fatal(err)
	}
	// A write waiting for admission ends at Close (or the write deadline, below).
	ca.SetWriteDeadline(time.Now().Add(time.Hour))
	errc := make(chan error, 1)
	go func() { _, err := ca.Write([]byte("x")); errc <- err }()
	<-queued
	ca.Close()
	if err := <-errc; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("queued write after Close: %v, want net.ErrClosed", err)
	}
	gate()

	c2, d := net.Pipe()
	defer d.Close()
	cc := s.Conn(c2, "bulk")
	defer cc.Close()
	gate, _ = s.Wait(context.Background(), "bulk", 1)
	defer gate()
	cc.SetWriteDeadline(time.Now().Add(-time.Second))
	if _, err := cc.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write past deadline: %v, want os.ErrDeadlineExceeded", err)
	}
}

func TestNewSchedulerRejects(t *testing.T) {
	for _, o := range []Options{{ChunkSize: -1}, {MinShare: 0.6}, {Slots: -2}, {LinkRate: -1}, {LinkBurst: 1 << 10}, {LinkRate: 1 << 20, LinkBurst: -1}} {
		if _, err := NewScheduler(testClasses, o); !errors.Is(err, ErrInvalidClass) {
			t.Errorf("options %+v: %v", o, err)
		}
	}
}
