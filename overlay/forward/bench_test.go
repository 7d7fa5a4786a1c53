package forward_test

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/overlay/forward"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
)

// serveRaw serves a tiny protocol on ln: read a 16-byte header (bytes in,
// bytes out), read the bytes in, write the bytes out; repeat.
func serveRaw(ln net.Listener) (wait func()) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
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
		}
	}()
	return wg.Wait
}

func roundTrip(b *testing.B, c net.Conn, in, out int, buf []byte) {
	var hdr [16]byte
	binary.LittleEndian.PutUint64(hdr[:8], uint64(in))
	binary.LittleEndian.PutUint64(hdr[8:], uint64(out))
	if _, err := c.Write(hdr[:]); err != nil {
		b.Fatal(err)
	}
	for in > 0 {
		n := min(in, len(buf))
		if _, err := c.Write(buf[:n]); err != nil {
			b.Fatal(err)
		}
		in -= n
	}
	if _, err := io.CopyBuffer(io.Discard, io.LimitReader(c, int64(out)), buf); err != nil {
		b.Fatal(err)
	}
}

func p50(d []time.Duration) time.Duration {
	slices.Sort(d)
	return d[len(d)/2]
}

// BenchmarkForward measures a connection through the forwarder (loopback,
// then the tailnet) against the same exchange on a direct tailnet
// connection from the cloud node, interleaved in one run; x-raw is the
// ratio of the medians.
func BenchmarkForward(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tn, err := overlaytest.Start(overlaytest.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer tn.Close()
	host, err := tn.Join(ctx, "gpu-host")
	if err != nil {
		b.Fatal(err)
	}
	defer host.Close()
	cloud, err := tn.Join(ctx, "cloud")
	if err != nil {
		b.Fatal(err)
	}
	defer cloud.Close()
	ln, err := host.Listen("tcp", ":7001")
	if err != nil {
		b.Fatal(err)
	}
	wait := serveRaw(ln)
	defer func() { ln.Close(); wait() }()

	fwd, err := forward.Start(forward.Config{Dial: cloud.Dial, Rules: []forward.Rule{{Listen: "127.0.0.1:0", Target: "gpu-host:7001"}}})
	if err != nil {
		b.Fatal(err)
	}
	defer fwd.Close()
	raw, err := cloud.Dial(ctx, "tcp", "gpu-host:7001")
	if err != nil {
		b.Fatal(err)
	}
	defer raw.Close()
	local, err := net.Dial("tcp", fwd.Addr(0).String())
	if err != nil {
		b.Fatal(err)
	}
	defer local.Close()

	for _, bc := range []struct {
		name    string
		in, out int
	}{
		{"rtt-64B", 64, 64},
		{"upload-4MiB", 4 << 20, 8},
		{"download-4MiB", 8, 4 << 20},
	} {
		b.Run(bc.name, func(b *testing.B) {
			buf := make([]byte, 1<<20)
			var rs, fs []time.Duration
			for b.Loop() {
				t0 := time.Now()
				roundTrip(b, raw, bc.in, bc.out, buf)
				t1 := time.Now()
				roundTrip(b, local, bc.in, bc.out, buf)
				fs = append(fs, time.Since(t1))
				rs = append(rs, t1.Sub(t0))
			}
			r, f := p50(rs), p50(fs)
			b.ReportMetric(float64(r.Microseconds()), "raw-p50-µs")
			b.ReportMetric(float64(f.Microseconds()), "fwd-p50-µs")
			b.ReportMetric(float64(f)/float64(r), "x-raw")
			if bytes := max(bc.in, bc.out); bytes > 1<<20 {
				b.ReportMetric(float64(bytes)/f.Seconds()/1e6, "fwd-MB/s")
				b.ReportMetric(float64(bytes)/r.Seconds()/1e6, "raw-MB/s")
			}
			b.ReportMetric(0, "ns/op")
		})
	}
}
