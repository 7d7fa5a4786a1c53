package gpusvc_test

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
)

// interleaveBulk runs raw and call alternately, b.N times each, moving size
// bytes per op, and reports both median rates and call's as a fraction of
// raw's (1 = as fast as raw tsnet TCP between the same nodes).
func interleaveBulk(b *testing.B, size int, raw, call func()) {
	var rs, cs []time.Duration
	b.SetBytes(int64(size))
	for b.Loop() {
		t0 := time.Now()
		raw()
		t1 := time.Now()
		call()
		cs = append(cs, time.Since(t1))
		rs = append(rs, t1.Sub(t0))
	}
	r, c := p50(rs), p50(cs)
	mbps := func(d time.Duration) float64 { return float64(size) / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(r), "raw-MB/s")
	b.ReportMetric(mbps(c), "call-MB/s")
	b.ReportMetric(float64(r)/float64(c), "of-raw")
}

// BenchmarkTransfer measures Write and Read of a resident buffer over the
// dev tailnet against raw tsnet TCP bulk between the same two nodes, in
// the same run (goal: of-raw ≥ 0.95).
func BenchmarkTransfer(b *testing.B) {
	w := startWorld(b, "laptop")
	raw := startRaw(b, w)
	c := w.clients["laptop"]
	ctx := context.Background()
	buf := make([]byte, 1<<20)

	sess, err := c.OpenSession(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer c.CloseSession(ctx, sess.ID)
	for _, size := range []int{4 << 20, 32 << 20} {
		data := randomBytes(size, 1)
		id, err := c.Alloc(ctx, sess.ID, "", uint64(size))
		if err != nil {
			b.Fatal(err)
		}
		name := map[int]string{4 << 20: "4MiB", 32 << 20: "32MiB"}[size]
		b.Run("write/"+name, func(b *testing.B) {
			interleaveBulk(b, size, func() { raw.roundTrip(b, size, 1, buf) }, func() {
				if _, err := c.Write(ctx, sess.ID, id, 0, bytes.NewReader(data)); err != nil {
					b.Fatal(err)
				}
			})
		})
		b.Run("read/"+name, func(b *testing.B) {
			interleaveBulk(b, size, func() { raw.roundTrip(b, 1, size, buf) }, func() {
				if _, err := c.Read(ctx, sess.ID, id, 0, 0, io.Discard); err != nil {
					b.Fatal(err)
				}
			})
		})
		c.Free(ctx, sess.ID, id)
	}
}

// BenchmarkResident compares a call on resident buffers (inputs uploaded
// once, result left on the host) with the same call carrying its data
// inline, over the dev tailnet.
func BenchmarkResident(b *testing.B) {
	w := startWorld(b, "laptop")
	c := w.clients["laptop"]
	ctx := context.Background()
	sess, err := c.OpenSession(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer c.CloseSession(ctx, sess.ID)
	upload := func(t kernel.Tensor) uint64 {
		id, err := c.Upload(ctx, sess.ID, "", uint64(len(t.Data)), bytes.NewReader(t.Data))
		if err != nil {
			b.Fatal(err)
		}
		return id
	}
	ref := func(id uint64, t kernel.Tensor) kernel.Arg {
		return kernel.Arg{Kind: kernel.ArgBuffer, Buffer: id, Tensor: kernel.Tensor{DType: t.DType, Shape: t.Shape}}
	}
	for _, tc := range []struct {
		name   string
		kernel string
		args   []kernel.Arg
		out    int64 // result bytes
	}{
		{"saxpy256K", "saxpy", []kernel.Arg{scalar(2), f32([]int64{256 << 10}), f32([]int64{256 << 10})}, 1 << 20},
		{"matmul256", "matrix_mul", []kernel.Arg{f32([]int64{256, 256}), f32([]int64{256, 256})}, 256 * 256 * 4},
	} {
		resArgs := make([]kernel.Arg, len(tc.args))
		for i, a := range tc.args {
			resArgs[i] = a
			if a.Kind == kernel.ArgTensor {
				resArgs[i] = ref(upload(a.Tensor), a.Tensor)
			}
		}
		out, err := c.Alloc(ctx, sess.ID, "", uint64(tc.out))
		if err != nil {
			b.Fatal(err)
		}
		inline := &pb.ComputeRequest{Kernel: tc.kernel, Args: gpusvc.ArgsToPB(tc.args)}
		resident := &pb.ComputeRequest{Kernel: tc.kernel, Session: sess.ID, Args: gpusvc.ArgsToPB(resArgs), OutBuffer: out}
		call := func(req *pb.ComputeRequest) func() {
			return func() {
				if _, err := c.ComputeRequest(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.Run(tc.name, func(b *testing.B) {
			var is, rs []time.Duration
			for b.Loop() {
				t0 := time.Now()
				call(inline)()
				t1 := time.Now()
				call(resident)()
				rs = append(rs, time.Since(t1))
				is = append(is, t1.Sub(t0))
			}
			i, r := p50(is), p50(rs)
			b.ReportMetric(float64(i.Microseconds()), "inline-p50-µs")
			b.ReportMetric(float64(r.Microseconds()), "resident-p50-µs")
			b.ReportMetric(float64(i)/float64(r), "speedup")
			b.ReportMetric(0, "ns/op")
		})
	}
}
