package gpusvc_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
	"github.com/gpumesh/gpumesh/policy"
)

const sessionPolicy = `
version = 1

rule "team" {
  subjects = ["laptop", "other"]
  gpus     = ["*"]
  kernels  = ["*"]
}

rule "tight" {
  subjects   = ["tight"]
  gpus       = ["*"]
  kernels    = ["matrix_mul"]
  max_memory = "1MiB"
}

rule "brief" {
  subjects     = ["brief"]
  gpus         = ["*"]
  kernels      = ["*"]
  idle_timeout = "200ms"
}

rule "small-chunks" {
  subjects    = ["chunky"]
  gpus        = ["*"]
  kernels     = ["*"]
  max_request = "64KiB"
}
`

// sessionWorld is a tailnet with a GPU host serving the CPU backend, whose
// live buffers the tests count, and client nodes.
type sessionWorld struct {
	host    *tsnet.Node
	nodes   map[string]*tsnet.Node
	clients map[string]*gpusvc.Client
	backend *cpu.Backend
	srv     *gpusvc.Server
	pol     *policy.Policy
}

func startSessionWorld(t testing.TB, clients ...string) *sessionWorld {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tn, err := overlaytest.Start(overlaytest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tn.Close() })
	pol, err := policy.Parse("sessions.hcl", []byte(sessionPolicy))
	if err != nil {
		t.Fatal(err)
	}
	w := &sessionWorld{nodes: map[string]*tsnet.Node{}, clients: map[string]*gpusvc.Client{}, backend: cpu.New(), pol: pol}

	names := append([]string{"gpu-host"}, clients...)
	nodes := make([]*tsnet.Node, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nodes[i], errs[i] = tn.Join(ctx, name)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nodes[i].Close() })
		w.nodes[names[i]] = nodes[i]
	}
	w.host = nodes[0]
	w.srv = w.serve(t, w.backend, gpusvc.DefaultPort)
	for _, name := range clients {
		w.clients[name] = w.dial(t, name, gpusvc.DefaultPort)
	}
	return w
}

// serve runs a server for backend on the host's tailnet port; the test's
// cleanup stops it.
func (w *sessionWorld) serve(t testing.TB, backend gpusvc.Backend, port int) *gpusvc.Server {
	t.Helper()
	srv, err := gpusvc.NewServer(gpusvc.Config{
		Backend: backend,
		WhoIs:   w.host.WhoIs,
		Policy:  func() *policy.Policy { return w.pol },
		Host:    "gpu-host",
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := w.host.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-served
	})
	return srv
}

func (w *sessionWorld) dial(t testing.TB, name string, port int) *gpusvc.Client {
	t.Helper()
	c, err := gpusvc.NewClient("gpu-host:"+strconv.Itoa(port), w.nodes[name].Dial)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// eventually polls cond every 10ms until it holds, failing the test after
// 20s: tests wait on events, bounded, never on a bare sleep.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("timed out waiting until %s", what)
		}
	}
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, uint64(n)))
	p := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			p[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n &^ 7; i < n; i++ {
		p[i] = byte(r.Uint32())
	}
	return p
}

func wantCode(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), msg) {
		t.Fatalf("got %v; want %v containing %q", err, code, msg)
	}
}

func TestSessions(t *testing.T) {
	w := startSessionWorld(t, "laptop", "other", "tight", "brief", "stranger", "chunky")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	laptop := w.clients["laptop"]
	live := func() int { n, _ := w.backend.Buffers(); return n }

	sess, err := laptop.OpenSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if sess.IdleTimeout != gpusvc.DefaultIdleTimeout {
		t.Errorf("idle timeout = %v; want the server's default %v", sess.IdleTimeout, gpusvc.DefaultIdleTimeout)
	}

	t.Run("round trip byte-exact", func(t *testing.T) {
		for i, n := range []int{1, 7, 4093, 1 << 20, 1<<20 + 1, 3<<20 + 12345, 5<<20 - 3} {
			data := randomBytes(n, uint64(i))
			id, err := laptop.Upload(ctx, sess.ID, "", uint64(n), bytes.NewReader(data))
			if err != nil {
				t.Fatalf("upload %d bytes: %v", n, err)
			}
			var back bytes.Buffer
			if got, err := laptop.Read(ctx, sess.ID, id, 0, 0, &back); err != nil || got != int64(n) {
				t.Fatalf("read %d bytes: got %d, %v", n, got, err)
			}
			if !bytes.Equal(back.Bytes(), data) {
				t.Fatalf("%d bytes came back different", n)
			}
			if err := laptop.Free(ctx, sess.ID, id); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("write and read at offsets", func(t *testing.T) {
		const size = 2<<20 + 5
		id, err := laptop.Alloc(ctx, sess.ID, "0", size)
		if err != nil {
			t.Fatal(err)
		}
		defer laptop.Free(ctx, sess.ID, id)
		patch := randomBytes(1<<20+16, 99) // ends exactly at the buffer's end
		const off = 1<<20 - 11
		if n, err := laptop.Write(ctx, sess.ID, id, off, bytes.NewReader(patch)); err != nil || n != int64(len(patch)) {
			t.Fatalf("write: %d, %v", n, err)
		}
		want := make([]byte, size)
		copy(want[off:], patch)
		var all bytes.Buffer
		if _, err := laptop.Read(ctx, sess.ID, id, 0, 0, &all); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(all.Bytes(), want) {
			t.Fatal("buffer differs from zeroes plus the patch")
		}
		var part bytes.Buffer
		if _, err := laptop.Read(ctx, sess.ID, id, off-3, 10, &part); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(part.Bytes(), want[off-3:off+7]) {
			t.Fatalf("partial read = %x; want %x", part.Bytes(), want[off-3:off+7])
		}
	})

	t.Run("killed mid-write leaves no buffer", func(t *testing.T) {
		before := live()
		_, buffersBefore := w.srv.Sessions()
		wctx, kill := context.WithCancel(ctx)
		defer kill()
		// The source kills the client's call after 2 MiB, once the host
		// holds the new buffer, as a client that vanishes would.
		src := &killingReader{r: bytes.NewReader(randomBytes(8<<20, 5)), after: 2 << 20, kill: func() {
			eventually(t, "the host allocated the buffer being written", func() bool { return live() == before+1 })
			kill()
		}, ctx: wctx}
		_, err := laptop.Upload(wctx, sess.ID, "", 8<<20, src)
		if status.Code(err) != codes.Canceled && !errors.Is(err, context.Canceled) {
			t.Fatalf("upload cut short: %v; want Canceled", err)
		}
		eventually(t, "the half-written buffer is freed", func() bool { return live() == before })
		if _, b := w.srv.Sessions(); b != buffersBefore {
			t.Errorf("session buffers = %d; want %d", b, buffersBefore)
		}
		// A reader that ends early fails the upload too, leaving nothing.
		_, err = laptop.Upload(ctx, sess.ID, "", 3<<20, bytes.NewReader(make([]byte, 2<<20)))
		if err == nil || !strings.Contains(err.Error(), "ended after 2097152 of 3145728 bytes") {
			t.Fatalf("short upload: %v", err)
		}
		eventually(t, "the short upload's buffer is freed", func() bool { return live() == before })
	})

	t.Run("compute on resident buffers equals inline", func(t *testing.T) {
		const m, k, n = 37, 53, 29
		a, b := f32([]int64{m, k}), f32([]int64{k, n})
		inline, err := laptop.Compute(ctx, "matrix_mul", a, b)
		if err != nil {
			t.Fatal(err)
		}
		ab, err := laptop.Upload(ctx, sess.ID, "", uint64(len(a.Tensor.Data)), bytes.NewReader(a.Tensor.Data))
		if err != nil {
			t.Fatal(err)
		}
		bb, err := laptop.Upload(ctx, sess.ID, "", uint64(len(b.Tensor.Data)), bytes.NewReader(b.Tensor.Data))
		if err != nil {
			t.Fatal(err)
		}
		out, err := laptop.Alloc(ctx, sess.ID, "", m*n*4)
		if err != nil {
			t.Fatal(err)
		}
		ref := func(id uint64, shape ...int64) kernel.Arg {
			return kernel.Arg{Kind: kernel.ArgBuffer, Buffer: id, Tensor: kernel.Tensor{DType: kernel.Float32, Shape: shape}}
		}
		args := gpusvc.ArgsToPB([]kernel.Arg{ref(ab, m, k), ref(bb, k, n)})
		// Result returned.
		res, err := laptop.ComputeRequest(ctx, &pb.ComputeRequest{Kernel: "matrix_mul", Session: sess.ID, Args: args})
		if err != nil {
			t.Fatal(err)
		}
		if got := res.GetOutputs()[0].GetData(); !bytes.Equal(got, inline.Data) {
			t.Fatal("matrix_mul on buffers differs from inline")
		}
		// Result kept resident, then read.
		res, err = laptop.ComputeUnary(ctx, &pb.ComputeRequest{Kernel: "matrix_mul", Session: sess.ID, Args: args, OutBuffer: out})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.GetOutputs()[0].GetData()) != 0 {
			t.Errorf("a call into out_buffer returned %d bytes of data", len(res.GetOutputs()[0].GetData()))
		}
		var back bytes.Buffer
		if _, err := laptop.Read(ctx, sess.ID, out, 0, 0, &back); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(back.Bytes(), inline.Data) {
			t.Fatal("out_buffer differs from inline")
		}
		// Mixed: one buffer, one inline tensor.
		mixed, err := laptop.ComputeRequest(ctx, &pb.ComputeRequest{Kernel: "matrix_mul", Session: sess.ID,
			Args: gpusvc.ArgsToPB([]kernel.Arg{ref(ab, m, k), b})})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(mixed.GetOutputs()[0].GetData(), inline.Data) {
			t.Fatal("matrix_mul on a buffer and a tensor differs from inline")
		}
		for _, id := range []uint64{ab, bb, out} {
			if err := laptop.Free(ctx, sess.ID, id); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("another identity cannot use the session", func(t *testing.T) {
		secret := []byte("laptop's secret weights")
		id, err := laptop.Upload(ctx, sess.ID, "", uint64(len(secret)), bytes.NewReader(secret))
		if err != nil {
			t.Fatal(err)
		}
		other := w.clients["other"]
		// The same answer as for a session that never existed.
		const bogus = 0x5eed
		for _, tc := range []struct {
			name string
			call func(session uint64) error
		}{
			{"read", func(s uint64) error { _, err := other.Read(ctx, s, id, 0, 0, io.Discard); return err }},
			{"write", func(s uint64) error { _, err := other.Write(ctx, s, id, 0, bytes.NewReader([]byte("x"))); return err }},
			{"upload", func(s uint64) error {
				_, err := other.Upload(ctx, s, "", 4, bytes.NewReader([]byte("abcd")))
				return err
			}},
			{"alloc", func(s uint64) error { _, err := other.Alloc(ctx, s, "", 16); return err }},
			{"free", func(s uint64) error { return other.Free(ctx, s, id) }},
			{"close", func(s uint64) error { return other.CloseSession(ctx, s) }},
			{"compute", func(s uint64) error {
				_, err := other.ComputeRequest(ctx, &pb.ComputeRequest{Kernel: "relu", Session: s, Args: gpusvc.ArgsToPB([]kernel.Arg{
					{Kind: kernel.ArgBuffer, Buffer: id, Tensor: kernel.Tensor{DType: kernel.Float32, Shape: []int64{4}}}})})
				return err
			}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				err := tc.call(sess.ID)
				wantCode(t, err, codes.NotFound, "no session "+strconv.FormatUint(sess.ID, 10))
				unknown := tc.call(bogus)
				if strings.ReplaceAll(status.Convert(err).Message(), strconv.FormatUint(sess.ID, 10), "N") !=
					strings.ReplaceAll(status.Convert(unknown).Message(), strconv.Itoa(bogus), "N") {
					t.Errorf("another's session: %q; unknown session: %q: the answers differ", err, unknown)
				}
			})
		}
		var back bytes.Buffer
		if _, err := laptop.Read(ctx, sess.ID, id, 0, 0, &back); err != nil || back.String() != string(secret) {
			t.Fatalf("laptop's buffer after the attempts: %q, %v", back.String(), err)
		}
		laptop.Free(ctx, sess.ID, id)
	})

	t.Run("quota", func(t *testing.T) {
		tight := w.clients["tight"]
		ts, err := tight.OpenSession(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tight.CloseSession(ctx, ts.ID)
		before := live()
		half, err := tight.Alloc(ctx, ts.ID, "", 512<<10)
		if err != nil {
			t.Fatal(err)
		}
		// A second session of the same identity shares the quota.
		ts2, err := tight.OpenSession(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, err = tight.Upload(ctx, ts2.ID, "", 600<<10, bytes.NewReader(make([]byte, 600<<10)))
		// Each buffer counts with its overhead (256 bytes).
		wantCode(t, err, codes.ResourceExhausted, "max_memory = 1048576 bytes, 524544 held, 614656 more asked")
		_, err = tight.Alloc(ctx, ts.ID, "", 600<<10)
		wantCode(t, err, codes.ResourceExhausted, "max_memory")
		if n := live(); n != before+1 {
			t.Errorf("live buffers = %d; want %d: a refused allocation left one", n, before+1)
		}
		// Closing the second session and freeing the first give it back.
		if err := tight.CloseSession(ctx, ts2.ID); err != nil {
			t.Fatal(err)
		}
		if err := tight.Free(ctx, ts.ID, half); err != nil {
			t.Fatal(err)
		}
		full, err := tight.Alloc(ctx, ts.ID, "", 1<<20-256)
		if err != nil {
			t.Fatalf("alloc of the whole quota after freeing: %v", err)
		}
		tight.Free(ctx, ts.ID, full)
	})

	t.Run("idle timeout frees", func(t *testing.T) {
		brief := w.clients["brief"]
		before := live()
		// On a loaded machine the session may idle out before the upload
		// lands (which shows the timeout too); then try again with a new
		// one, for up to 30s.
		var bs gpusvc.Session
		giveUp := time.Now().Add(30 * time.Second)
		for {
			var err error
			if bs, err = brief.OpenSession(ctx); err != nil {
				t.Fatal(err)
			}
			if bs.IdleTimeout != 200*time.Millisecond {
				t.Fatalf("idle timeout = %v; want the rule's 200ms", bs.IdleTimeout)
			}
			_, err = brief.Upload(ctx, bs.ID, "", 1<<20, bytes.NewReader(make([]byte, 1<<20)))
			if err == nil {
				break
			}
			if status.Code(err) != codes.NotFound || time.Now().After(giveUp) {
				t.Fatal(err)
			}
		}
		eventually(t, "the idle session's buffer is freed", func() bool { return live() == before })
		_, err = brief.Alloc(ctx, bs.ID, "", 100)
		wantCode(t, err, codes.NotFound, "no session")
	})

	t.Run("close frees", func(t *testing.T) {
		before := live()
		s2, err := laptop.OpenSession(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if _, err := laptop.Alloc(ctx, s2.ID, "", 4096); err != nil {
				t.Fatal(err)
			}
		}
		if n := live(); n != before+3 {
			t.Fatalf("live buffers = %d; want %d", n, before+3)
		}
		if err := laptop.CloseSession(ctx, s2.ID); err != nil {
			t.Fatal(err)
		}
		if n := live(); n != before {
			t.Errorf("live buffers after close = %d; want %d", n, before)
		}
		wantCode(t, laptop.CloseSession(ctx, s2.ID), codes.NotFound, "no session")
	})

	t.Run("custom kernels need a CUDA host", func(t *testing.T) {
		_, err := laptop.API().LoadModule(ctx, &pb.LoadModuleRequest{Session: sess.ID, Source: &pb.LoadModuleRequest_Ptx{Ptx: []byte(".version 7.0")}})
		wantCode(t, err, codes.Unimplemented, "custom kernels need a CUDA host")
		_, err = laptop.API().Launch(ctx, &pb.LaunchRequest{Session: sess.ID, Module: "m", Function: "f"})
		wantCode(t, err, codes.Unimplemented, "gpumesh-gpu worker")
	})

	// Finding 9 (client): Upload sent 1 MiB chunks whatever the caller's
	// max_request, so it always failed for a caller allowed less.
	t.Run("upload fits max_request", func(t *testing.T) {
		c := w.clients["chunky"]
		s, err := c.OpenSession(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseSession(ctx, s.ID)
		data := randomBytes(1<<20+3, 9)
		id, err := c.Upload(ctx, s.ID, "", uint64(len(data)), bytes.NewReader(data))
		if err != nil {
			t.Fatalf("upload of 1 MiB under a 64 KiB max_request: %v", err)
		}
		var got bytes.Buffer
		if _, err := c.Read(ctx, s.ID, id, 0, 0, &got); err != nil || !bytes.Equal(got.Bytes(), data) {
			t.Fatalf("read back: %d bytes, %v; want the upload byte-exact", got.Len(), err)
		}
	})

	t.Run("validation", func(t *testing.T) {
		api := laptop.API()
		id, err := laptop.Alloc(ctx, sess.ID, "", 100)
		if err != nil {
			t.Fatal(err)
		}
		defer laptop.Free(ctx, sess.ID, id)
		read := func(req *pb.ReadRequest) error {
			st, err := api.Read(ctx, req)
			if err != nil {
				return err
			}
			for {
				if _, err := st.Recv(); err != nil {
					if err == io.EOF {
						return nil
					}
					return err
				}
			}
		}
		write := func(msgs ...*pb.WriteRequest) error {
			st, err := api.Write(ctx)
			if err != nil {
				return err
			}
			for _, m := range msgs {
				if err := st.Send(m); err != nil {
					break // the status comes with CloseAndRecv
				}
			}
			_, err = st.CloseAndRecv()
			return err
		}
		for _, tc := range []struct {
			name string
			err  func() error
			code codes.Code
			msg  string
		}{
			{"no session", func() error { _, err := laptop.Alloc(ctx, 0, "", 1); return err }, codes.InvalidArgument, "call OpenSession first"},
			{"unknown session", func() error { _, err := laptop.Alloc(ctx, 12345, "", 1); return err }, codes.NotFound, "no session 12345"},
			{"unknown buffer", func() error { return read(&pb.ReadRequest{Session: sess.ID, Buffer: 999}) }, codes.NotFound, "no buffer 999"},
			{"free unknown buffer", func() error { return laptop.Free(ctx, sess.ID, 999) }, codes.NotFound, "no buffer 999"},
			{"alloc 0 bytes", func() error { _, err := laptop.Alloc(ctx, sess.ID, "", 0); return err }, codes.InvalidArgument, "0 bytes"},
			{"alloc on a missing gpu", func() error { _, err := laptop.Alloc(ctx, sess.ID, "3", 8); return err }, codes.InvalidArgument, `no gpu "3"`},
			{"read past the end", func() error { return read(&pb.ReadRequest{Session: sess.ID, Buffer: id, Offset: 101}) }, codes.OutOfRange, "offset 101"},
			{"read overruns", func() error { return read(&pb.ReadRequest{Session: sess.ID, Buffer: id, Offset: 90, Length: 11}) }, codes.OutOfRange, "overruns"},
			{"huge chunks", func() error { return read(&pb.ReadRequest{Session: sess.ID, Buffer: id, ChunkBytes: 1 << 30}) }, codes.InvalidArgument, "chunks"},
			{"write overruns", func() error {
				return write(&pb.WriteRequest{Session: sess.ID, Buffer: id, Offset: 95, Data: make([]byte, 6)})
			}, codes.OutOfRange, "overruns"},
			{"write overruns in a later chunk", func() error {
				return write(&pb.WriteRequest{Session: sess.ID, Buffer: id, Data: make([]byte, 60)}, &pb.WriteRequest{Data: make([]byte, 41)})
			}, codes.OutOfRange, "at offset 60 overruns"},
			{"write past the end", func() error { return write(&pb.WriteRequest{Session: sess.ID, Buffer: id, Offset: 200}) }, codes.OutOfRange, "offset 200"},
			{"write names both", func() error {
				return write(&pb.WriteRequest{Session: sess.ID, Buffer: id, AllocBytes: 10})
			}, codes.InvalidArgument, "not both"},
			{"write names nothing", func() error { return write(&pb.WriteRequest{Session: sess.ID}) }, codes.InvalidArgument, "names a buffer"},
			{"empty write stream", func() error { return write() }, codes.InvalidArgument, "empty stream"},
			{"header repeated", func() error {
				return write(&pb.WriteRequest{Session: sess.ID, Buffer: id}, &pb.WriteRequest{Session: sess.ID})
			}, codes.InvalidArgument, "only the first message"},
			{"buffer without session", func() error {
				_, err := laptop.ComputeRequest(ctx, &pb.ComputeRequest{Kernel: "relu", Args: gpusvc.ArgsToPB([]kernel.Arg{
					{Kind: kernel.ArgBuffer, Buffer: id, Tensor: kernel.Tensor{DType: kernel.Float32, Shape: []int64{4}}}})})
				return err
			}, codes.InvalidArgument, "without the call's session"},
			{"buffer smaller than its shape", func() error {
				_, err := laptop.ComputeRequest(ctx, &pb.ComputeRequest{Kernel: "relu", Session: sess.ID, Args: gpusvc.ArgsToPB([]kernel.Arg{
					{Kind: kernel.ArgBuffer, Buffer: id, Tensor: kernel.Tensor{DType: kernel.Float32, Shape: []int64{26}}}})})
				return err
			}, codes.InvalidArgument, "its buffer holds 100"},
			{"stranger", func() error { _, err := w.clients["stranger"].OpenSession(ctx); return err }, codes.PermissionDenied, "denied by gpu-host's policy"},
			{"chunk over max_request", func() error {
				// The client sizes its chunks to fit (see "upload fits
				// max_request"); one sent by hand does not.
				c := w.clients["chunky"]
				s, err := c.OpenSession(ctx)
				if err != nil {
					return err
				}
				defer c.CloseSession(ctx, s.ID)
				st, err := c.API().Write(ctx)
				if err != nil {
					return err
				}
				st.Send(&pb.WriteRequest{Session: s.ID, AllocBytes: 1 << 20, Data: make([]byte, 64<<10+1)})
				_, err = st.CloseAndRecv()
				return err
			}, codes.ResourceExhausted, "max_request of 65536 bytes"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				before := live()
				wantCode(t, tc.err(), tc.code, tc.msg)
				eventually(t, "no buffer is left behind", func() bool { return live() == before })
			})
		}
	})

	if err := laptop.CloseSession(ctx, sess.ID); err != nil {
		t.Fatal(err)
	}
	if n, _ := w.srv.Sessions(); n != 0 {
		t.Errorf("%d sessions still open", n)
	}
	if n := live(); n != 0 {
		t.Errorf("%d buffers still live", n)
	}
}

// TestStopFreesSessions: stopping the server frees every buffer and stops
// the idle reaper.
func TestStopFreesSessions(t *testing.T) {
	w := startSessionWorld(t, "laptop")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	backend := cpu.New()
	srv := w.serve(t, backend, gpusvc.DefaultPort+1)
	c := w.dial(t, "laptop", gpusvc.DefaultPort+1)
	for range 2 {
		s, err := c.OpenSession(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Upload(ctx, s.ID, "", 3000, bytes.NewReader(make([]byte, 3000))); err != nil {
			t.Fatal(err)
		}
	}
	if n, b := backend.Buffers(); n != 2 || b != 6000 {
		t.Fatalf("before stop: %d buffers, %d bytes", n, b)
	}
	srv.Stop()
	if n, b := backend.Buffers(); n != 0 || b != 0 {
		t.Errorf("after stop: %d buffers, %d bytes; want none", n, b)
	}
	srv.Stop() // twice is safe
	// With the world's server stopped too, no reaper may be left.
	w.srv.Stop()
	eventually(t, "no idle reaper goroutine is left", func() bool {
		buf := make([]byte, 1<<20)
		return !strings.Contains(string(buf[:runtime.Stack(buf, true)]), "(*sessions).reap")
	})
}

// killingReader calls kill once after `after` bytes, then fails reads
// once ctx is done, as a client process dying mid-stream would.
type killingReader struct {
	r     io.Reader
	after int
	kill  func()
	ctx   context.Context
	n     int
	once  sync.Once
}

func (k *killingReader) Read(p []byte) (int, error) {
	if k.n >= k.after {
		k.once.Do(k.kill)
		<-k.ctx.Done()
		return 0, k.ctx.Err()
	}
	n, err := k.r.Read(p[:min(len(p), k.after-k.n)])
	k.n += n
	return n, err
}
