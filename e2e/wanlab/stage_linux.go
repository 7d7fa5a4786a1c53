package wanlab

import (
	"errors"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/tun"
)

// headroom is the space a TUN device with offloads needs before each
// packet (its virtio-net header).
const headroom = 16

// stage carries packets between the TUN device's two sides through one
// Line per direction: its reader pushes each packet it reads into its
// direction's line, its writer writes each packet back when it is due.
type stage struct {
	dev   tun.Device
	sideB netip.Prefix // packets to these addresses go A→B
	start time.Time
	trace func(Dir, Delivery, time.Duration)
	logf  func(string, ...any)

	mu    sync.Mutex
	lines [2]*Line // guarded by mu

	wake      chan struct{} // a packet was pushed
	done      chan struct{} // closed by stop
	wg        sync.WaitGroup
	writeErrs atomic.Uint64
	readErrs  atomic.Uint64
}

func newStage(dev tun.Device, sideB netip.Prefix, lines [2]*Line, trace func(Dir, Delivery, time.Duration), logf func(string, ...any)) *stage {
	s := &stage{dev: dev, sideB: sideB, start: time.Now(), trace: trace, logf: logf, lines: lines,
		wake: make(chan struct{}, 1), done: make(chan struct{})}
	s.wg.Add(2)
	go s.read()
	go s.write()
	return s
}

// now is the stage's clock: time since it started, monotonic.
func (s *stage) now() time.Duration { return time.Since(s.start) }

// dir tells a packet's direction by its destination address.
func (s *stage) dir(pkt []byte) Dir {
	var dst netip.Addr
	switch {
	case len(pkt) >= 20 && pkt[0]>>4 == 4:
		dst = netip.AddrFrom4([4]byte(pkt[16:20]))
	case len(pkt) >= 40 && pkt[0]>>4 == 6:
		dst = netip.AddrFrom16([16]byte(pkt[24:40]))
	}
	if s.sideB.Contains(dst) {
		return AtoB
	}
	return BtoA
}

func (s *stage) read() {
	defer s.wg.Done()
	batch := s.dev.BatchSize()
	bufs := make([][]byte, batch)
	sizes := make([]int, batch)
	for i := range bufs {
		bufs[i] = make([]byte, headroom+65535)
	}
	for {
		n, err := s.dev.Read(bufs, sizes, headroom)
		if err != nil {
			select {
			case <-s.done:
				return
			default:
			}
			if errors.Is(err, os.ErrClosed) {
				return
			}
			if s.readErrs.Add(1) <= 10 {
				s.logf("wanlab: read from the TUN device: %v", err)
			}
			continue
		}
		now := s.now()
		s.mu.Lock()
		for i := range n {
			pkt := append([]byte(nil), bufs[i][headroom:headroom+sizes[i]]...)
			s.lines[s.dir(pkt)].Push(now, pkt)
		}
		s.mu.Unlock()
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

func (s *stage) write() {
	defer s.wg.Done()
	bufs := make([][]byte, writeBatch)
	for i := range bufs {
		bufs[i] = make([]byte, headroom+65535)
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var out []Delivery
	var dirs []Dir
	for {
		s.mu.Lock()
		now := s.now()
		out, dirs = out[:0], dirs[:0]
		for d, l := range s.lines {
			out = l.Pop(now, out)
			for len(dirs) < len(out) {
				dirs = append(dirs, Dir(d))
			}
		}
		var next time.Duration
		var waiting bool
		for _, l := range s.lines {
			if n, ok := l.Next(); ok && (!waiting || n < next) {
				next, waiting = n, true
			}
		}
		s.mu.Unlock()

		if len(out) > 0 {
			s.send(bufs, out, dirs)
			continue
		}
		wait := time.Hour
		if waiting {
			wait = max(next-now, 0)
		}
		timer.Reset(wait)
		select {
		case <-s.done:
			return
		case <-s.wake:
		case <-timer.C:
		}
	}
}

// writeBatch is how many packets the writer hands the TUN device at once
// (wireguard-go's conn.IdealBatchSize), so that it can coalesce them.
const writeBatch = 128

// send writes out's packets to the TUN device, in batches.
func (s *stage) send(bufs [][]byte, out []Delivery, dirs []Dir) {
	for len(out) > 0 {
		k := min(len(out), len(bufs))
		batch := bufs[:k]
		for i, d := range out[:k] {
			batch[i] = bufs[i][:headroom+copy(bufs[i][headroom:cap(bufs[i])], d.Data)]
		}
		if _, err := s.dev.Write(batch, headroom); err != nil {
			if s.writeErrs.Add(1) <= 10 {
				s.logf("wanlab: write to the TUN device: %v", err)
			}
		}
		if s.trace != nil {
			written := s.now()
			for i, d := range out[:k] {
				s.trace(dirs[i], d, written)
			}
		}
		for i := range batch {
			bufs[i] = bufs[i][:cap(bufs[i])]
		}
		out, dirs = out[k:], dirs[k:]
	}
}

// set replaces both lines; packets still in the old ones leave at once.
func (s *stage) set(lines [2]*Line) {
	s.mu.Lock()
	var out []Delivery
	var dirs []Dir
	for d, l := range s.lines {
		out = l.Pop(1<<62, out)
		for len(dirs) < len(out) {
			dirs = append(dirs, Dir(d))
		}
	}
	s.lines = lines
	s.mu.Unlock()
	bufs := make([][]byte, writeBatch)
	for i := range bufs {
		bufs[i] = make([]byte, headroom+65535)
	}
	s.send(bufs, out, dirs)
}

func (s *stage) stats() [2]Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return [2]Stats{s.lines[0].Stats(), s.lines[1].Stats()}
}

// stop ends both goroutines and closes the device.
func (s *stage) stop() {
	close(s.done)
	s.dev.Close()
	s.wg.Wait()
}
