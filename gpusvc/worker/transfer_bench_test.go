package worker_test

import (
	"io"
	"net"
	"path/filepath"
	"testing"

	"github.com/gpumesh/gpumesh/gpusvc/worker"
)

const benchChunk = 1 << 20

// BenchmarkTransfer measures node↔worker bulk transfer (WriteAt and ReadAt
// of 1 MiB chunks into a stand-in worker's buffer) against a raw Unix
// socket copy of the same chunks in the same run, and reports the ratio.
// The overlay carries ~300 MB/s; this path must be well above it.
func BenchmarkTransfer(b *testing.B) {
	raw := rawUnixMBps(b, 64)
	s, err := worker.Start(b.Context(), worker.Config{Path: workerBin, Args: []string{"--stand-in"}, IdleTimeout: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	h, err := s.Alloc(alice(), 0, 16*benchChunk)
	if err != nil {
		b.Fatal(err)
	}
	chunk := make([]byte, benchChunk)
	for _, dir := range []string{"write", "read"} {
		b.Run(dir, func(b *testing.B) {
			b.SetBytes(benchChunk)
			i := 0
			for b.Loop() {
				off := int64(i%16) * benchChunk
				i++
				var err error
				if dir == "write" {
					err = s.WriteAt(alice(), h, off, chunk)
				} else {
					err = s.ReadAt(alice(), h, off, chunk)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			mbps := float64(b.N) * benchChunk / b.Elapsed().Seconds() / 1e6
			b.ReportMetric(mbps, "MB/s")
			b.ReportMetric(mbps/raw, "x_raw_unix")
		})
	}
}

// rawUnixMBps copies n chunks over a Unix socket and returns MB/s.
func rawUnixMBps(b *testing.B, n int) float64 {
	path := filepath.Join(b.TempDir(), "raw.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		_, err = io.Copy(io.Discard, c)
		done <- err
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	chunk := make([]byte, benchChunk)
	best := 0.0
	for range 3 {
		t0 := nowNanos()
		for range n {
			if _, err := c.Write(chunk); err != nil {
				b.Fatal(err)
			}
		}
		best = max(best, float64(n)*benchChunk/(float64(nowNanos()-t0)/1e9)/1e6)
	}
	c.Close()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.Logf("raw unix socket: %.0f MB/s", best)
	return best
}
