package wanlab

import (
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

const testPort = 9000

// udpIn opens a UDP socket in ns bound to port, with a receive buffer big
// enough for every packet a test sends.
func udpIn(t *testing.T, ns Namespace, port int) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	if err := ns.Do(func() (err error) {
		c, err = net.ListenUDP("udp4", &net.UDPAddr{Port: port})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	raw.Control(func(fd uintptr) {
		err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20)
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// sendSeq sends n UDP packets of size IP bytes from A to B's testPort,
// each carrying its sequence number, in batches of 64 (one sendmmsg
// each). Between batches it waits until the stage has read what was sent,
// so that nothing is dropped before the stage.
func sendSeq(t *testing.T, lab *Lab, n, size int) {
	t.Helper()
	src := udpIn(t, lab.A, 0)
	pc := ipv4.NewPacketConn(src)
	dst := &net.UDPAddr{IP: AddrB.AsSlice(), Port: testPort}
	payload := size - 28 // IPv4 and UDP headers
	for sent := 0; sent < n; {
		var msgs []ipv4.Message
		for i := sent; i < min(sent+64, n); i++ {
			b := make([]byte, payload)
			binary.BigEndian.PutUint32(b, uint32(i))
			msgs = append(msgs, ipv4.Message{Buffers: [][]byte{b}, Addr: dst})
		}
		for len(msgs) > 0 {
			k, err := pc.WriteBatch(msgs, 0)
			if err != nil {
				t.Fatalf("send: %v", err)
			}
			msgs = msgs[k:]
			sent += k
		}
		waitFor(t, "the stage to read what was sent", func() bool { ab, _ := lab.Stats(); return ab.In >= uint64(sent) })
	}
}

// waitFor polls cond until it holds; a minute without is a failure.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	fail := time.After(time.Minute)
	for !cond() {
		select {
		case <-tick.C:
		case <-fail:
			t.Fatalf("waited a minute for %s", what)
		}
	}
}

// receive reads n packets from c and returns their sequence numbers in
// the order they came and when each came.
func receive(t *testing.T, c *net.UDPConn, n int) ([]uint32, []time.Time) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(time.Minute)) // a failure guard, not a wait
	var seqs []uint32
	var at []time.Time
	buf := make([]byte, 2048)
	for len(seqs) < n {
		k, err := c.Read(buf)
		if err != nil {
			t.Fatalf("received %d of %d packets: %v", len(seqs), n, err)
		}
		seqs = append(seqs, binary.BigEndian.Uint32(buf[:k]))
		at = append(at, time.Now())
	}
	return seqs, at
}

// simulate runs im on n packets in a line of its own and returns the
// arrival numbers in the order they leave, and the line's stats.
func simulate(t *testing.T, im Impairment, seed uint64, n, size int) ([]uint32, Stats) {
	t.Helper()
	l, err := NewLine(im, seed, uint64(AtoB))
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		l.Push(time.Duration(i)*time.Microsecond, make([]byte, size))
	}
	var order []uint32
	for _, d := range l.Pop(time.Hour, nil) {
		order = append(order, uint32(d.Index))
	}
	return order, l.Stats()
}

// TestLabFates: the packets B receives from A, and their order, are
// exactly those a Line with the same seed predicts: the same ones lost,
// duplicated and reordered.
func TestLabFates(t *testing.T) {
	for _, tc := range []struct {
		name string
		im   Impairment
	}{
		{"loss-dup-reorder", Impairment{Delay: 5 * time.Millisecond, Loss: 0.1, Duplicate: 0.05, Reorder: 0.05,
			ReorderDepth: 2, ReorderTimeout: 2 * time.Second}},
		{"burst-loss", Impairment{Delay: time.Millisecond, Burst: BurstLoss(0.05, 4)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const n, size, seed = 1000, 200, 77
			lab := New(t, Config{AtoB: tc.im, Seed: seed})
			dst := udpIn(t, lab.B, testPort)
			want, wantStats := simulate(t, tc.im, seed, n, size)
			sendSeq(t, lab, n, size)
			got, _ := receive(t, dst, len(want))
			if !slices.Equal(got, want) {
				t.Errorf("B received %d packets in an order the model does not predict:\n got %v\nwant %v", len(got), got, want)
			}
			waitFor(t, "the line to empty", func() bool { ab, _ := lab.Stats(); return ab.Out == wantStats.Out })
			if ab, _ := lab.Stats(); ab != wantStats {
				t.Errorf("stage stats %+v; the model's %+v", ab, wantStats)
			}
			st := wantStats
			t.Logf("%d sent: %d lost, %d duplicated, %d held back, %d received", n, st.Lost, st.Duplicated, st.Held, len(got))
		})
	}
}

// TestLabDelayAndRate: packets leave the stage no earlier than due, due
// times keep the line's delay and rate, and B cannot receive faster than
// the rate allows.
func TestLabDelayAndRate(t *testing.T) {
	const n, size = 400, 1250
	const rate = 20_000_000 // 0.5 ms per packet
	im := Impairment{Delay: 10 * time.Millisecond, Rate: rate, Queue: time.Second}
	var mu sync.Mutex
	var early []Delivery
	var lateness []time.Duration
	lab := New(t, Config{AtoB: im, Seed: 1, Trace: func(d Dir, p Delivery, written time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		if d != AtoB {
			return
		}
		if written < p.Due {
			early = append(early, p)
		}
		lateness = append(lateness, written-p.Due)
	}})
	dst := udpIn(t, lab.B, testPort)
	t0 := time.Now()
	sendSeq(t, lab, n, size)
	_, at := receive(t, dst, n)

	mu.Lock()
	defer mu.Unlock()
	if len(early) > 0 {
		t.Errorf("%d packets written before they were due, e.g. %+v", len(early), early[0])
	}
	// B's bytes crossed the bottleneck one packet per 0.5 ms after the
	// first was sent: a bound load cannot break, only stretch.
	elapsed := at[len(at)-1].Sub(t0)
	if minimum := im.Delay + n*time.Duration(size*8)*time.Second/rate; elapsed < minimum {
		t.Errorf("B received %d × %d bytes %v after the first was sent; at %d bit/s that takes at least %v", n, size, elapsed, rate, minimum)
	}
	slices.Sort(lateness)
	t.Logf("received at %.1f Mbit/s (limit %.0f); stage lateness p50 %v p99 %v max %v", float64(n*size*8)/elapsed.Seconds()/1e6,
		rate/1e6, lateness[len(lateness)/2], lateness[len(lateness)*99/100], lateness[len(lateness)-1])
}

// TestLabOverflow: a burst beyond the bottleneck's queue is tail-dropped,
// and B receives exactly what the stage let through.
func TestLabOverflow(t *testing.T) {
	const n, size = 256, 1250
	lab := New(t, Config{AtoB: Impairment{Rate: 10_000_000, Queue: 5 * time.Millisecond}})
	dst := udpIn(t, lab.B, testPort)
	sendSeq(t, lab, n, size)
	waitFor(t, "the line to empty", func() bool { ab, _ := lab.Stats(); return ab.Out+ab.Overflow == n })
	ab, _ := lab.Stats()
	got, _ := receive(t, dst, int(ab.Out))
	if ab.Overflow == 0 {
		t.Errorf("%d packets in bursts of 64 through a 5-packet queue, none dropped: %+v", n, ab)
	}
	if !slices.IsSorted(got) {
		t.Errorf("a tail-dropping FIFO reordered: %v", got)
	}
	dst.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := dst.Read(make([]byte, 2048)); err == nil {
		t.Errorf("B received more than the %d packets the stage let through", ab.Out)
	}
	t.Logf("%d sent, %d dropped by the queue, %d received", n, ab.Overflow, len(got))
}

// TestLabRoundTrip: a UDP echo between A and B takes at least both
// directions' delays; the other direction has its own impairment.
func TestLabRoundTrip(t *testing.T) {
	lab := New(t, Config{AtoB: Impairment{Delay: 15 * time.Millisecond}, BtoA: Impairment{Delay: 5 * time.Millisecond}})
	echo := udpIn(t, lab.B, testPort)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 2048)
		for {
			k, from, err := echo.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			echo.WriteToUDPAddrPort(buf[:k], from)
		}
	}()
	defer wg.Wait()
	defer echo.Close()
	c := udpIn(t, lab.A, 0)
	c.SetDeadline(time.Now().Add(time.Minute)) // a failure guard
	var rtts []time.Duration
	buf := make([]byte, 64)
	for i := range 20 {
		t0 := time.Now()
		if _, err := c.WriteToUDPAddrPort([]byte{byte(i)}, netip.AddrPortFrom(AddrB, testPort)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Read(buf); err != nil {
			t.Fatal(err)
		}
		rtts = append(rtts, time.Since(t0))
	}
	slices.Sort(rtts)
	if rtts[0] < 20*time.Millisecond {
		t.Errorf("fastest echo %v; the lab delays 15 ms + 5 ms", rtts[0])
	}
	ab, ba := lab.Stats()
	if ab.Out != 20 || ba.Out != 20 {
		t.Errorf("stage carried %d A→B and %d B→A; want 20 each", ab.Out, ba.Out)
	}
	t.Logf("echo RTT min %v p50 %v max %v (20 ms of delay)", rtts[0], rtts[len(rtts)/2], rtts[len(rtts)-1])
}

// TestLabRouterLocal: R's own addresses are reached without the stage, so
// a tailnet's servers there are not impaired.
func TestLabRouterLocal(t *testing.T) {
	lab := New(t, Config{AtoB: Impairment{Loss: 1}, BtoA: Impairment{Loss: 1}})
	srv := udpIn(t, lab.R, testPort)
	c := udpIn(t, lab.B, 0)
	if _, err := c.WriteToUDPAddrPort([]byte("hi"), netip.AddrPortFrom(RouterB, testPort)); err != nil {
		t.Fatal(err)
	}
	srv.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := srv.Read(make([]byte, 16)); err != nil {
		t.Fatalf("R did not receive B's packet: %v", err)
	}
	if ab, ba := lab.Stats(); ab.In+ba.In != 0 {
		t.Errorf("the stage saw packets for R: %+v %+v", ab, ba)
	}
}
