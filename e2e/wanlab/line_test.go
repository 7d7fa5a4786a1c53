package wanlab

import (
	"fmt"
	"math"
	"slices"
	"testing"
	"time"
)

// run pushes n packets of size bytes into a line, one every gap from t=0,
// popping as it goes at each arrival, and returns the verdicts and every
// delivery (the rest popped at the end).
func run(t *testing.T, im Impairment, seed uint64, n, size int, gap time.Duration) ([]Verdict, []Delivery, *Line) {
	t.Helper()
	l, err := NewLine(im, seed, 0)
	if err != nil {
		t.Fatal(err)
	}
	var vs []Verdict
	var out []Delivery
	for i := range n {
		now := time.Duration(i) * gap
		out = l.Pop(now, out)
		pkt := make([]byte, size)
		pkt[0] = byte(i)
		vs = append(vs, l.Push(now, pkt))
	}
	out = l.Pop(time.Hour, out)
	if l.Queued() != 0 {
		t.Fatalf("%d packets left in the line after popping at +1h", l.Queued())
	}
	return vs, out, l
}

func TestLinePerfect(t *testing.T) {
	vs, out, l := run(t, Impairment{}, 1, 100, 100, time.Millisecond)
	if len(out) != 100 {
		t.Fatalf("delivered %d of 100", len(out))
	}
	for i, d := range out {
		if d.Index != uint64(i) || d.Due != d.Arrived || vs[i].Fate != Delivered {
			t.Fatalf("delivery %d: %+v (verdict %+v); want index %d due on arrival", i, d, vs[i], i)
		}
	}
	if st := l.Stats(); st.In != 100 || st.Out != 100 || st.BytesOut != 100*100 {
		t.Errorf("stats %+v", st)
	}
}

func TestLineDelay(t *testing.T) {
	l, err := NewLine(Impairment{Delay: 20 * time.Millisecond}, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	l.Push(5*time.Millisecond, []byte{1})
	if next, ok := l.Next(); !ok || next != 25*time.Millisecond {
		t.Fatalf("Next = %v, %v; want 25ms", next, ok)
	}
	if out := l.Pop(25*time.Millisecond-1, nil); len(out) != 0 {
		t.Fatalf("popped %d packets 1ns before they were due", len(out))
	}
	if out := l.Pop(25*time.Millisecond, nil); len(out) != 1 || out[0].Due != 25*time.Millisecond {
		t.Fatalf("popped %+v at 25ms; want the packet", out)
	}
	if _, ok := l.Next(); ok {
		t.Error("Next reports a packet in an empty line")
	}
}

// TestLineRate: 1250-byte packets at 10 Mbit/s take 1 ms each on the
// bottleneck; a burst leaves 1 ms apart, and a 5 ms queue takes five of it.
func TestLineRate(t *testing.T) {
	im := Impairment{Rate: 10_000_000, Queue: 5 * time.Millisecond, Delay: 10 * time.Millisecond}
	vs, out, l := run(t, im, 1, 8, 1250, 0) // all at t=0
	for i, v := range vs {
		want := Delivered
		if i >= 5 {
			want = Overflow
		}
		if v.Fate != want {
			t.Errorf("packet %d: %v, want %v", i, v.Fate, want)
		}
	}
	if len(out) != 5 {
		t.Fatalf("delivered %d, want 5", len(out))
	}
	for i, d := range out {
		if want := time.Duration(i+1)*time.Millisecond + im.Delay; d.Due != want {
			t.Errorf("packet %d due at %v, want %v", i, d.Due, want)
		}
	}
	if st := l.Stats(); st.Overflow != 3 {
		t.Errorf("overflow %d, want 3", st.Overflow)
	}

	// Offered at exactly the rate, nothing queues or drops.
	vs, out, _ = run(t, im, 1, 1000, 1250, time.Millisecond)
	for i, d := range out {
		if vs[i].Fate != Delivered || d.Due != d.Arrived+time.Millisecond+im.Delay {
			t.Fatalf("packet %d at the line rate: %+v", i, d)
		}
	}
}

// TestLineLoss: independent loss loses about the fraction asked for, the
// same packets for the same seed, other packets for another seed.
func TestLineLoss(t *testing.T) {
	const n = 100_000
	lost := func(seed uint64) []uint64 {
		vs, out, _ := run(t, Impairment{Loss: 0.01}, seed, n, 64, time.Microsecond)
		var idx []uint64
		for _, v := range vs {
			if v.Fate == Lost {
				idx = append(idx, v.Index)
			}
		}
		if len(out)+len(idx) != n {
			t.Fatalf("delivered %d + lost %d != %d", len(out), len(idx), n)
		}
		return idx
	}
	a, b, c := lost(7), lost(7), lost(8)
	// Binomial(100000, 0.01): mean 1000, sd 31.5; ±6 sd.
	if len(a) < 810 || len(a) > 1190 {
		t.Errorf("lost %d of %d at 1%%; want 810..1190", len(a), n)
	}
	if !slices.Equal(a, b) {
		t.Error("the same seed lost different packets")
	}
	if slices.Equal(a, c) {
		t.Error("another seed lost the same packets")
	}
}

// TestLineBurstLoss: the Gilbert model loses its mean fraction in runs of
// its mean burst length; independent loss of the same mean has runs of ~1.
func TestLineBurstLoss(t *testing.T) {
	const n = 200_000
	runs := func(im Impairment) (frac, meanRun float64) {
		vs, _, _ := run(t, im, 3, n, 64, time.Microsecond)
		var lost, bursts int
		for i, v := range vs {
			if v.Fate == Lost {
				lost++
				if i == 0 || vs[i-1].Fate != Lost {
					bursts++
				}
			}
		}
		return float64(lost) / n, float64(lost) / float64(bursts)
	}
	g := BurstLoss(0.01, 5)
	if m := g.MeanLoss(); math.Abs(m-0.01) > 1e-9 {
		t.Fatalf("BurstLoss(0.01, 5).MeanLoss() = %v", m)
	}
	frac, burst := runs(Impairment{Burst: g})
	// 400 bursts on average: the loss fraction within ±30%, the run
	// length within ±25%.
	if frac < 0.007 || frac > 0.013 || burst < 3.75 || burst > 6.25 {
		t.Errorf("burst loss: lost %.4f in runs of %.2f; want 0.01 in runs of 5", frac, burst)
	}
	frac, burst = runs(Impairment{Loss: 0.01})
	if burst > 1.1 {
		t.Errorf("independent loss: runs of %.2f (lost %.4f); want ~1.01", burst, frac)
	}
}

// TestLineJitter: delays spread over Delay ± Jitter, and packets still
// leave in the order they came.
func TestLineJitter(t *testing.T) {
	im := Impairment{Delay: 20 * time.Millisecond, Jitter: 5 * time.Millisecond}
	_, out, _ := run(t, im, 5, 2000, 100, time.Millisecond)
	var lo, hi time.Duration = time.Hour, 0
	for i, d := range out {
		if d.Index != uint64(i) {
			t.Fatalf("delivery %d is packet %d: jitter reordered", i, d.Index)
		}
		if i > 0 && d.Due < out[i-1].Due {
			t.Fatalf("packet %d due before packet %d", i, i-1)
		}
		delay := d.Due - d.Arrived
		lo, hi = min(lo, delay), max(hi, delay)
	}
	// With a packet every 1 ms, FIFO raises some delays above Delay-Jitter
	// but none above Delay+Jitter.
	if lo < 15*time.Millisecond || hi > 25*time.Millisecond || hi-lo < 8*time.Millisecond {
		t.Errorf("delays spread %v..%v; want within 15ms..25ms, at least 8ms wide", lo, hi)
	}
}

// TestLineReorder: a held packet leaves right after the ReorderDepth
// packets that overtake it; every packet leaves exactly once.
func TestLineReorder(t *testing.T) {
	im := Impairment{Delay: time.Millisecond, Reorder: 0.1, ReorderDepth: 2, ReorderTimeout: time.Second}
	vs, out, l := run(t, im, 9, 1000, 64, 10*time.Microsecond)
	pos := map[uint64]int{}
	for i, d := range out {
		if _, dup := pos[d.Index]; dup {
			t.Fatalf("packet %d left twice", d.Index)
		}
		pos[d.Index] = i
	}
	if len(pos) != 1000 {
		t.Fatalf("%d of 1000 packets left", len(pos))
	}
	var held int
	for i, v := range vs {
		if !v.Held {
			continue
		}
		held++
		// The next two packets that were not held themselves leave just
		// before it (unless the stream ended first).
		var passed []int
		for j := i + 1; j < len(vs) && len(passed) < 2; j++ {
			if !vs[j].Held {
				passed = append(passed, j)
			}
		}
		if len(passed) < 2 {
			continue
		}
		if !(pos[uint64(passed[0])] < pos[uint64(i)] && pos[uint64(passed[1])] < pos[uint64(i)]) {
			t.Errorf("held packet %d left at %d; packets %v at %d, %d should be ahead", i, pos[uint64(i)], passed,
				pos[uint64(passed[0])], pos[uint64(passed[1])])
		}
	}
	if st := l.Stats(); held < 70 || held > 130 || st.Held != uint64(held) {
		t.Errorf("held %d (stats %d) of 1000 at 10%%", held, st.Held)
	}
}

func TestLineReorderTimeout(t *testing.T) {
	im := Impairment{Delay: 10 * time.Millisecond, Reorder: 1, ReorderTimeout: 3 * time.Millisecond}
	l, err := NewLine(im, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if v := l.Push(0, []byte{1}); !v.Held {
		t.Fatal("a packet with reorder probability 1 was not held")
	}
	if next, _ := l.Next(); next != 13*time.Millisecond {
		t.Fatalf("Next = %v; want the hold's deadline, 13ms", next)
	}
	if out := l.Pop(13*time.Millisecond, nil); len(out) != 1 || out[0].Due != 13*time.Millisecond {
		t.Fatalf("popped %+v; want the held packet at its deadline", out)
	}
}

// TestLineDuplicate: a duplicate is an equal copy right after its original.
func TestLineDuplicate(t *testing.T) {
	vs, out, l := run(t, Impairment{Duplicate: 0.05}, 11, 2000, 64, time.Microsecond)
	st := l.Stats()
	if st.Out != 2000+st.Duplicated || st.Duplicated < 50 || st.Duplicated > 150 {
		t.Fatalf("stats %+v: want ~100 duplicates and every packet out", st)
	}
	i := 0
	for _, v := range vs {
		d := out[i]
		if d.Index != v.Index || d.Copy {
			t.Fatalf("delivery %d is %+v; want the original of packet %d", i, d, v.Index)
		}
		i++
		if v.Duplicated {
			c := out[i]
			if c.Index != v.Index || !c.Copy || !slices.Equal(c.Data, d.Data) || &c.Data[0] == &d.Data[0] {
				t.Fatalf("delivery %d is %+v; want a separate copy of packet %d", i, c, v.Index)
			}
			i++
		}
	}
}

// TestLineDeterministic: what leaves, when and in which order depends on
// the seed and the arrivals, not on when Pop is called.
func TestLineDeterministic(t *testing.T) {
	im := Impairment{Delay: 3 * time.Millisecond, Jitter: time.Millisecond, Loss: 0.02, Reorder: 0.05,
		ReorderTimeout: time.Second, Duplicate: 0.02, Rate: 50_000_000, Queue: 2 * time.Millisecond}
	trace := func(popEvery int) string {
		l, err := NewLine(im, 42, 1)
		if err != nil {
			t.Fatal(err)
		}
		var out []Delivery
		for i := range 5000 {
			now := time.Duration(i) * 100 * time.Microsecond / 3
			if popEvery > 0 && i%popEvery == 0 {
				out = l.Pop(now, out)
			}
			l.Push(now, make([]byte, 200+i%1200))
		}
		out = l.Pop(time.Hour, out)
		s := ""
		for _, d := range out {
			s += fmt.Sprintf("%d@%d ", d.Index, d.Due)
		}
		return s
	}
	a, b, c := trace(0), trace(1), trace(97)
	if a != b || a != c {
		t.Error("the order or due times out depend on when Pop was called")
	}
}

func TestImpairmentValidate(t *testing.T) {
	for _, im := range []Impairment{
		{Loss: 1.5}, {Loss: -0.1}, {Duplicate: 2}, {Reorder: math.NaN()}, {Delay: -1}, {Rate: -5},
		{ReorderDepth: -1}, {Burst: &GilbertElliott{}}, {Burst: &GilbertElliott{GoodToBad: 0.1, BadToGood: 2}},
	} {
		if _, err := NewLine(im, 1, 0); err == nil {
			t.Errorf("NewLine(%+v) accepted", im)
		}
	}
	l, err := NewLine(Impairment{Rate: 1e6}, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if im := l.Impairment(); im.Queue != defaultQueue || im.ReorderDepth != 1 || im.ReorderTimeout != defaultReorderTimeout {
		t.Errorf("defaults not filled in: %+v", im)
	}
}
