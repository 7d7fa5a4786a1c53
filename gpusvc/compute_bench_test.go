package gpusvc_test

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
)

// rawPath is a plain TCP connection between the same two tailnet nodes as
// the compute client: the baseline every benchmark here is a ratio to.
type rawPath struct {
	c net.Conn
}

// startRaw serves a tiny protocol on the host's tailnet port 7001: read an
// 8-byte request (bytes to send back), then that many bytes in, reply with
// the asked number of bytes.
func startRaw(b *testing.B, w *world) *rawPath {
	ln, err := w.host.Listen("tcp", ":7001")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var hdr [16]byte
		buf := make([]byte, 1<<20)
		for {
			if _, err := io.ReadFull(c, hdr[:]); err != nil {
				return
			}
			in, out := binary.LittleEndian.Uint64(hdr[:8]), binary.LittleEndian.Uint64(hdr[8:])
			if _, err := io.CopyBuffer(io.Discard, io.LimitReader(c, int64(in)), buf); err != nil {
				return
			}
			for out > 0 {
				n := min(out, uint64(len(buf)))
				if _, err := c.Write(buf[:n]); err != nil {
					return
				}
				out -= n
			}
		}
	}()
	b.Cleanup(func() {
		ln.Close()
		<-done
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	laptop := w.clientNodes["laptop"]
	c, err := laptop.Dial(ctx, "tcp", "gpu-host:7001")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return &rawPath{c: c}
}

// roundTrip sends in bytes and reads out bytes back.
func (r *rawPath) roundTrip(b *testing.B, in, out int, buf []byte) {
	var hdr [16]byte
	binary.LittleEndian.PutUint64(hdr[:8], uint64(in))
	binary.LittleEndian.PutUint64(hdr[8:], uint64(out))
	if _, err := r.c.Write(hdr[:]); err != nil {
		b.Fatal(err)
	}
	for in > 0 {
		n := min(in, len(buf))
		if _, err := r.c.Write(buf[:n]); err != nil {
			b.Fatal(err)
		}
		in -= n
	}
	if _, err := io.CopyBuffer(io.Discard, io.LimitReader(r.c, int64(out)), buf); err != nil {
		b.Fatal(err)
	}
}

func p50(d []time.Duration) time.Duration {
	slices.Sort(d)
	return d[len(d)/2]
}

// interleave runs raw and call alternately, b.N times each, and reports
// both medians and their ratio: drift on a busy machine hits both alike.
func interleave(b *testing.B, raw, call func()) {
	var rs, cs []time.Duration
	for b.Loop() {
		t0 := time.Now()
		raw()
		t1 := time.Now()
		call()
		cs = append(cs, time.Since(t1))
		rs = append(rs, t1.Sub(t0))
	}
	r, c := p50(rs), p50(cs)
	b.ReportMetric(float64(r.Microseconds()), "raw-p50-µs")
	b.ReportMetric(float64(c.Microseconds()), "call-p50-µs")
	b.ReportMetric(float64(c)/float64(r), "x-raw")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkCompute measures Compute over the dev tailnet against a raw TCP
// round trip between the same two nodes.
func BenchmarkCompute(b *testing.B) {
	w := startWorld(b, "laptop")
	raw := startRaw(b, w)
	c := w.clients["laptop"]
	ctx := context.Background()
	buf := make([]byte, 1<<20)

	x := f32([]int64{16})
	saxpy := &pb.ComputeRequest{Kernel: "saxpy", Args: gpusvc.ArgsToPB([]kernel.Arg{scalar(2), x, x})}
	mustCall := func(f func() error) func() {
		return func() {
			if err := f(); err != nil {
				b.Fatal(err)
			}
		}
	}
	// A 1-byte ping-pong is the raw per-call floor.
	ping := func() { raw.roundTrip(b, 1, 1, buf) }

	b.Run("saxpy16/stream", func(b *testing.B) {
		interleave(b, ping, mustCall(func() error { _, err := c.ComputeRequest(ctx, saxpy); return err }))
	})
	b.Run("saxpy16/unary", func(b *testing.B) {
		interleave(b, ping, mustCall(func() error { _, err := c.ComputeUnary(ctx, saxpy); return err }))
	})

	const n = 512
	a := f32([]int64{n, n})
	mm := &pb.ComputeRequest{Kernel: "matrix_mul", Args: gpusvc.ArgsToPB([]kernel.Arg{a, a})}
	local := cpu.New()
	shape := []int64{n, n}
	b.Run("matmul512", func(b *testing.B) {
		// The raw path for a matmul: the same bytes over TCP (two
		// matrices in, one out) plus the same product computed locally.
		inBytes, outBytes := 2*n*n*4, n*n*4
		rawMM := func() {
			raw.roundTrip(b, inBytes, outBytes, buf)
			if _, err := local.Compute(ctx, gpusvc.Call{Kernel: "matrix_mul", Args: []kernel.Arg{a, a}, OutShape: shape}); err != nil {
				b.Fatal(err)
			}
		}
		interleave(b, rawMM, mustCall(func() error { _, err := c.ComputeRequest(ctx, mm); return err }))
	})
	b.Run("bulk", func(b *testing.B) {
		// Raw tsnet TCP bulk throughput, 8 MiB per op, for reference.
		const size = 8 << 20
		b.SetBytes(size)
		for b.Loop() {
			raw.roundTrip(b, size, 1, buf)
		}
	})
}

// BenchmarkConcurrentCalls measures 64 small calls made at once by one
// client on its one connection (the shared stream runs them concurrently)
// against the same 64 calls one after another, alternating the two; the
// x-sequential metric is the throughput ratio (issue 13: goal ≥ 8×).
func BenchmarkConcurrentCalls(b *testing.B) {
	w := startWorld(b, "laptop")
	c := w.clients["laptop"]
	ctx := context.Background()
	x := f32([]int64{16})
	saxpy := &pb.ComputeRequest{Kernel: "saxpy", Args: gpusvc.ArgsToPB([]kernel.Arg{scalar(2), x, x})}
	call := func() {
		if _, err := c.ComputeRequest(ctx, saxpy); err != nil {
			b.Error(err)
		}
	}
	const n = 64
	one := func() {
		for range n {
			call()
		}
	}
	all := func() {
		var wg sync.WaitGroup
		for range n {
			wg.Go(call)
		}
		wg.Wait()
	}
	call() // the client learns its limits and opens its stream
	var seq, par []time.Duration
	for b.Loop() {
		t0 := time.Now()
		one()
		t1 := time.Now()
		all()
		par = append(par, time.Since(t1))
		seq = append(seq, t1.Sub(t0))
	}
	s, p := p50(seq), p50(par)
	b.ReportMetric(float64(s.Microseconds())/n, "sequential-µs/call")
	b.ReportMetric(float64(p.Microseconds())/n, "concurrent-µs/call")
	b.ReportMetric(float64(s)/float64(p), "x-sequential")
	b.ReportMetric(0, "ns/op")
}
