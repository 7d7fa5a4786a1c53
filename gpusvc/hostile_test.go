package gpusvc_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpumesh/gpumesh/gpusvc"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
)

// TestHostile attacks a real host on the embedded tailnet the way issue 12
// describes each finding, and checks that it now holds.
func TestHostile(t *testing.T) {
	w := startHostile(t, "laptop", "roamer", "eager", "stranger", "observer", "hog", "pair", "lost", "found")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// Finding 1: one call killed the host. matrix_mul of [2^22,1] by
	// [1,2^22] is a 32 MiB request whose output is 64 TiB; the CPU
	// backend allocated it up front and the process died.
	t.Run("finding1_output_bounded_before_allocated", func(t *testing.T) {
		laptop := w.client(t, "laptop")
		const n = 1 << 22
		col := kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.Tensor{DType: kernel.Float32, Shape: []int64{n, 1}, Data: make([]byte, 4*n)}}
		row := kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.Tensor{DType: kernel.Float32, Shape: []int64{1, n}, Data: make([]byte, 4*n)}}
		_, err := laptop.API().Compute(ctx, &pb.ComputeRequest{Kernel: "matrix_mul", Args: gpusvc.ArgsToPB([]kernel.Arg{col, row})})
		wantCode(t, err, codes.ResourceExhausted, "an output of [4194304 4194304] is 70368744177664 bytes")
		// The same on the shared stream: refused, and the stream goes on.
		_, err = laptop.Compute(ctx, "matrix_mul", col, row)
		wantCode(t, err, codes.ResourceExhausted, "70368744177664 bytes")
		if _, err := laptop.Compute(ctx, "matrix_mul", f32([]int64{2, 2}), f32([]int64{2, 2})); err != nil {
			t.Fatalf("a small product after the attack: %v", err)
		}

		// Into a buffer: the output must fit the buffer; shapes whose size
		// overflows are refused before anything is looked at.
		sess, err := laptop.OpenSession(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer laptop.CloseSession(ctx, sess.ID)
		small, err := laptop.Alloc(ctx, sess.ID, "", 64)
		if err != nil {
			t.Fatal(err)
		}
		_, err = laptop.API().Compute(ctx, &pb.ComputeRequest{Kernel: "matrix_mul", Session: sess.ID, OutBuffer: small,
			Args: gpusvc.ArgsToPB([]kernel.Arg{col, row})})
		wantCode(t, err, codes.InvalidArgument, "the output is 70368744177664 bytes; buffer")
		huge := kernel.Arg{Kind: kernel.ArgBuffer, Buffer: small, Tensor: kernel.Tensor{DType: kernel.Float32, Shape: []int64{1 << 40, 1 << 40}}}
		_, err = laptop.API().Compute(ctx, &pb.ComputeRequest{Kernel: "matrix_mul", Session: sess.ID, Args: gpusvc.ArgsToPB([]kernel.Arg{huge, huge})})
		wantCode(t, err, codes.InvalidArgument, "too many elements")

		// Alloc under a rule without max_memory: the host's budget holds.
		_, err = laptop.Alloc(ctx, sess.ID, "", 2<<30)
		wantCode(t, err, codes.ResourceExhausted, "the host is full")
		// Many 1-byte buffers: each counts with its overhead, and a
		// session holds at most 1024.
		before := w.srv.Load().MemoryHeld
		for i := range 1023 {
			if _, err := laptop.Alloc(ctx, sess.ID, "", 1); err != nil {
				t.Fatalf("1-byte buffer %d: %v", i, err)
			}
		}
		_, err = laptop.Alloc(ctx, sess.ID, "", 1)
		wantCode(t, err, codes.ResourceExhausted, "holds 1024 buffers")
		if got, want := w.srv.Load().MemoryHeld-before, int64(1023*(1+256)); got != want {
			t.Errorf("1023 one-byte buffers count %d bytes against the budget; want %d (size and overhead)", got, want)
		}
		if err := laptop.CloseSession(ctx, sess.ID); err != nil {
			t.Fatal(err)
		}
		if held := w.srv.Load().MemoryHeld; held != 0 {
			t.Errorf("after the session closed the host holds %d bytes; want 0", held)
		}
	})

	// Finding 2: a deny on a GPU was bypassed by naming it differently
	// (00, +0, -0, its UUID, or none).
	t.Run("finding2_gpu_names_resolve_before_the_policy", func(t *testing.T) {
		api := w.api(t, "roamer")
		mark := w.rec.mark()
		names := []string{"", "0", "00", "+0", "-0", testUUID, strings.ToLower(testUUID)}
		for _, g := range names {
			_, err := api.Compute(ctx, &pb.ComputeRequest{Kernel: "relu", Gpu: g, Args: gpusvc.ArgsToPB([]kernel.Arg{f32([]int64{4})})})
			wantCode(t, err, codes.PermissionDenied, `deny "no-relu-on-0"`)
			_, err = api.Compute(ctx, &pb.ComputeRequest{Kernel: "saxpy", Gpu: g, Args: gpusvc.ArgsToPB([]kernel.Arg{scalar(1), f32([]int64{4}), f32([]int64{4})})})
			wantCode(t, err, codes.PermissionDenied, `deny "no-saxpy-on-uuid"`)
		}
		for _, r := range w.rec.since(mark) {
			if r.GPU != "0" {
				t.Errorf("%s %s recorded on gpu %q; want the canonical \"0\"", r.Method, r.Kernel, r.GPU)
			}
		}
		for _, g := range []string{"1", "-1", "0x0", " 0", "++0", "99999999999999999999", "GPU-nope", strings.Repeat("0", 200)} {
			_, err := api.Compute(ctx, &pb.ComputeRequest{Kernel: "transpose", Gpu: g, Args: gpusvc.ArgsToPB([]kernel.Arg{f32([]int64{2, 2})})})
			if status.Code(err) != codes.InvalidArgument {
				t.Errorf("gpu %.20q: %v; want InvalidArgument", g, err)
			}
		}
		// Allowed elsewhere: the canonical names reach the kernel.
		if _, err := api.Compute(ctx, &pb.ComputeRequest{Kernel: "transpose", Gpu: "+0", Args: gpusvc.ArgsToPB([]kernel.Arg{f32([]int64{2, 2})})}); err != nil {
			t.Errorf("transpose on +0: %v", err)
		}
	})

	// Finding 3: rate was bypassed by alternating a rate-limited kernel with
	// one whose rule sets no rate (50 matrix products in 12 ms under 1/s).
	t.Run("finding3_rate_holds_per_identity_and_rule", func(t *testing.T) {
		eager := w.api(t, "eager")
		start := time.Now()
		matmuls := 0
		for range 20 {
			if _, err := eager.Compute(ctx, &pb.ComputeRequest{Kernel: "relu", Args: gpusvc.ArgsToPB([]kernel.Arg{f32([]int64{4})})}); err != nil {
				t.Fatalf("relu (no rate): %v", err)
			}
			_, err := eager.Compute(ctx, &pb.ComputeRequest{Kernel: "matrix_mul", Args: gpusvc.ArgsToPB([]kernel.Arg{f32([]int64{2, 2}), f32([]int64{2, 2})})})
			switch status.Code(err) {
			case codes.OK:
				matmuls++
			case codes.ResourceExhausted:
				if !strings.Contains(err.Error(), `rate = 1 calls/s, burst 1 (rule "mm-slow")`) {
					t.Fatalf("refusal does not name the limit: %v", err)
				}
			default:
				t.Fatal(err)
			}
		}
		// A burst of 1 and 1/s since: the bound depends on how long the
		// loop took on this machine, not on any assumed speed.
		if limit := 2 + int(time.Since(start).Seconds()); matmuls > limit {
			t.Errorf("%d matrix products passed a 1/s rate in %v; at most %d may", matmuls, time.Since(start), limit)
		}
	})

	// Finding 4: resources were held before authorization. A peer the
	// policy denies opened 5000 streams and held 390-780 MiB; Write read its
	// first message before identifying the caller.
	t.Run("finding4_nothing_held_before_authorized", func(t *testing.T) {
		api := w.api(t, "stranger")
		mark := w.rec.mark()
		start := time.Now()
		const attempts = 200
		var wg sync.WaitGroup
		codesSeen := make(chan codes.Code, attempts)
		chunk := make([]byte, 1<<20)
		for range attempts {
			wg.Go(func() {
				st, err := api.Write(ctx)
				if err == nil {
					st.Send(&pb.WriteRequest{AllocBytes: 1 << 20, Data: chunk})
					_, err = st.CloseAndRecv()
				}
				codesSeen <- status.Code(err)
			})
		}
		wg.Wait()
		close(codesSeen)
		for c := range codesSeen {
			if c != codes.PermissionDenied {
				t.Fatalf("a denied peer's write: %v; want PermissionDenied", c)
			}
		}
		eventually(t, "every refused attempt is accounted for in the records", func() bool {
			return w.rec.attempts(mark)["stranger/Write/PermissionDenied"] == attempts
		})
		for _, r := range w.rec.since(mark) {
			if r.Caller.Node == "stranger" && (r.BytesIn != 0 || r.Method != "Write") {
				t.Errorf("record of a refused attempt: %+v; want Write with nothing read", r)
			}
		}
		// At most a burst, then ten a second (and a count each second):
		// the bound follows how long this machine took, not an assumed speed.
		if n, limit := len(w.rec.since(mark)), refusalBurst+11*(1+int(time.Since(start).Seconds())); n > limit {
			t.Errorf("%d records for %d refusals in %v: refusals flood the audit log (at most %d)", n, attempts, time.Since(start), limit)
		}
		eventually(t, "the host holds no stream and no call", func() bool {
			l := w.srv.Load()
			return l.Streams == 0 && l.CallsInFlight == 0
		})

		// A peer the policy gives nothing holds two connections at most.
		second, third := w.api(t, "stranger"), w.api(t, "stranger")
		_, err := second.Devices(ctx, &pb.DevicesRequest{})
		wantCode(t, err, codes.PermissionDenied, "denied by gpu-host's policy")
		_, err = third.Devices(ctx, &pb.DevicesRequest{})
		if status.Code(err) != codes.Unavailable {
			t.Errorf("a denied peer's third connection: %v; want it refused (Unavailable)", err)
		}

		// Write decides before reading: a caller without a resident right is
		// refused without sending a byte.
		st, err := w.api(t, "observer").Write(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var res pb.WriteResponse
		wantCode(t, st.RecvMsg(&res), codes.PermissionDenied, "resident buffers need the right")

		// An allowed caller holds hostileMaxStreams streams at most; more
		// are refused before they are read, and the slots come back.
		hog := w.api(t, "hog")
		sctx, scancel := context.WithCancel(ctx)
		var open []pb.GPU_WriteClient
		for range hostileMaxStreams {
			st, err := hog.Write(sctx)
			if err != nil {
				t.Fatal(err)
			}
			open = append(open, st)
		}
		eventually(t, "the hog's streams are open on the host", func() bool { return w.srv.Load().Streams >= hostileMaxStreams })
		over, err := hog.Write(ctx)
		if err != nil {
			t.Fatal(err)
		}
		wantCode(t, over.RecvMsg(&res), codes.ResourceExhausted, "calls and streams open")
		scancel()
		for _, st := range open {
			st.RecvMsg(&res)
		}
		eventually(t, "the hog's stream slots come back", func() bool { return w.srv.Load().Streams == 0 })
		if _, err := hog.Devices(ctx, &pb.DevicesRequest{}); err != nil {
			t.Errorf("the hog after its streams ended: %v", err)
		}
	})
	eventually(t, "the clients' connections are gone", func() bool { return w.srv.Load().Conns == 0 })

	// Finding 5: failed lookups and unknown kernels were recorded without a
	// caller; Devices and Explain were never recorded.
	t.Run("finding5_every_call_recorded_once_with_its_caller", func(t *testing.T) {
		api := w.api(t, "laptop")
		mark := w.rec.mark()
		calls := map[string]func() error{
			"Compute": func() error {
				_, err := api.Compute(ctx, &pb.ComputeRequest{Kernel: "conv9d"})
				return err
			},
			"Alloc": func() error {
				_, err := api.Alloc(ctx, &pb.AllocRequest{Session: 12345, Bytes: 8})
				return err
			},
			"Read": func() error {
				st, err := api.Read(ctx, &pb.ReadRequest{Session: 12345, Buffer: 1})
				if err == nil {
					_, err = st.Recv()
				}
				return err
			},
			"Write": func() error {
				st, err := api.Write(ctx)
				if err == nil {
					st.Send(&pb.WriteRequest{Session: 12345, Buffer: 1})
					_, err = st.CloseAndRecv()
				}
				return err
			},
			"Free":         func() error { _, err := api.Free(ctx, &pb.FreeRequest{Session: 12345, Buffer: 1}); return err },
			"CloseSession": func() error { _, err := api.CloseSession(ctx, &pb.CloseSessionRequest{Session: 12345}); return err },
			"LoadModule": func() error {
				_, err := api.LoadModule(ctx, &pb.LoadModuleRequest{Source: &pb.LoadModuleRequest_Ptx{Ptx: []byte("x")}})
				return err
			},
			"Devices": func() error { _, err := api.Devices(ctx, &pb.DevicesRequest{}); return err },
			"Explain": func() error { _, err := api.Explain(ctx, &pb.ExplainRequest{Kernel: "relu"}); return err },
		}
		for _, f := range calls {
			f()
		}
		got := map[string]int{}
		for _, r := range w.rec.since(mark) {
			if r.Caller.Node != "laptop" {
				t.Errorf("%s recorded with caller %q; want laptop", r.Method, r.Caller.Node)
			}
			got[r.Method]++
		}
		for m := range calls {
			if got[m] != 1 {
				t.Errorf("%s recorded %d times; want once", m, got[m])
			}
		}
	})

	// Finding 6: client strings went unbounded into the record: a 16 MiB
	// kernel name made a 48 MiB audit line, and 11 calls rotated history
	// away.
	t.Run("finding6_audit_lines_are_bounded", func(t *testing.T) {
		api := w.api(t, "laptop")
		before := fileSize(t, w.audit)
		long := strings.Repeat("k", 1<<20)
		_, err := api.Compute(ctx, &pb.ComputeRequest{Kernel: long})
		wantCode(t, err, codes.InvalidArgument, "kernel name of 1048576 bytes")
		if strings.Contains(err.Error(), strings.Repeat("k", 200)) {
			t.Error("the error echoes the whole kernel name")
		}
		_, err = api.Alloc(ctx, &pb.AllocRequest{Session: 1, Gpu: long, Bytes: 1})
		wantCode(t, err, codes.InvalidArgument, "gpu name of 1048576 bytes")
		_, err = api.Explain(ctx, &pb.ExplainRequest{Kernel: long, Gpu: long})
		wantCode(t, err, codes.InvalidArgument, "name of 1048576 bytes")
		if grown := fileSize(t, w.audit) - before; grown > 3*1024 {
			t.Errorf("three calls with 1 MiB names grew the audit log by %d bytes; want a short line each", grown)
		}
	})

	// Finding 8: deny { kernels = ["*"] } left custom code and resident
	// buffers allowed when another rule granted custom:ptx. found holds
	// the same grant without the deny, and gets what it grants.
	t.Run("finding8_deny_star_denies_everything", func(t *testing.T) {
		ptx := &pb.LoadModuleRequest{Session: 1, Source: &pb.LoadModuleRequest_Ptx{Ptx: []byte(".version 7.0")}}
		lost, found := w.api(t, "lost"), w.api(t, "found")

		_, err := lost.OpenSession(ctx, &pb.OpenSessionRequest{})
		wantCode(t, err, codes.PermissionDenied, `"lost"`)
		_, err = lost.Alloc(ctx, &pb.AllocRequest{Session: 1, Bytes: 1})
		wantCode(t, err, codes.PermissionDenied, `"lost"`)
		_, err = lost.LoadModule(ctx, ptx)
		wantCode(t, err, codes.PermissionDenied, `"lost"`)
		_, err = lost.Compute(ctx, &pb.ComputeRequest{Kernel: "relu", Args: gpusvc.ArgsToPB([]kernel.Arg{f32([]int64{4})})})
		wantCode(t, err, codes.PermissionDenied, `"lost"`)
		_, err = lost.Devices(ctx, &pb.DevicesRequest{})
		wantCode(t, err, codes.PermissionDenied, `"lost"`)

		sess, err := found.OpenSession(ctx, &pb.OpenSessionRequest{})
		if err != nil {
			t.Fatalf("found, the same grant without the deny: %v", err)
		}
		if _, err := found.Alloc(ctx, &pb.AllocRequest{Session: sess.GetSession(), Bytes: 1}); err != nil {
			t.Errorf("found's Alloc: %v", err)
		}
		ptx.Session = sess.GetSession()
		// The CPU backend runs no custom code: found gets that answer, not
		// a refusal by the policy.
		_, err = found.LoadModule(ctx, ptx)
		if c := status.Code(err); c == codes.PermissionDenied {
			t.Errorf("found's LoadModule: %v; want the backend's answer, not the policy's", err)
		}
		found.CloseSession(ctx, &pb.CloseSessionRequest{Session: sess.GetSession()})
	})

	// Finding 9, the lows on the server side.
	t.Run("finding9_devices_refuses_denied_peers", func(t *testing.T) {
		_, err := w.api(t, "stranger").Devices(ctx, &pb.DevicesRequest{})
		wantCode(t, err, codes.PermissionDenied, "no rule names stranger")
	})

	t.Run("finding9_panic_is_one_failed_call", func(t *testing.T) {
		w.backend.panicOn(t, "softmax")
		laptop := w.client(t, "laptop")
		mark := w.rec.mark()
		_, err := laptop.Compute(ctx, "softmax", f32([]int64{2, 2}))
		wantCode(t, err, codes.Internal, "a bug, logged on the host")
		if _, err := laptop.Compute(ctx, "relu", f32([]int64{4})); err != nil {
			t.Errorf("after a panicking call: %v", err)
		}
		if a := w.rec.attempts(mark); a["laptop/Compute/Internal"] != 1 {
			t.Errorf("records %v; want the panicking call once, Internal", a)
		}
	})

	t.Run("finding9_compute_pins_its_buffers", func(t *testing.T) {
		laptop := w.client(t, "laptop")
		sess, err := laptop.OpenSession(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer laptop.CloseSession(ctx, sess.ID)
		x := []float32{1, 2, 3, 4}
		id, err := laptop.Upload(ctx, sess.ID, "", 16, bytes.NewReader(kernel.Float32Bytes(x)))
		if err != nil {
			t.Fatal(err)
		}
		h := w.backend.hold(t, "reduce_sum")
		done := make(chan error, 1)
		var got kernel.Tensor
		go func() {
			res, err := laptop.ComputeRequest(ctx, &pb.ComputeRequest{Kernel: "reduce_sum", Session: sess.ID,
				Args: gpusvc.ArgsToPB([]kernel.Arg{{Kind: kernel.ArgBuffer, Buffer: id, Tensor: kernel.Tensor{DType: kernel.Float32, Shape: []int64{4}}}})})
			if err == nil {
				got = gpusvc.TensorFromPB(res.GetOutputs()[0])
			}
			done <- err
		}()
		h.wait(t, 1)
		// The owner frees the buffer while the kernel reads it.
		if err := laptop.Free(ctx, sess.ID, id); err != nil {
			t.Fatal(err)
		}
		if _, b := w.srv.Sessions(); b != 0 {
			t.Errorf("the freed buffer is still in the session")
		}
		if n, _ := w.backend.Buffers(); n != 1 {
			t.Errorf("%d buffers live in the backend while the kernel runs; want the pinned one", n)
		}
		h.open()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if v := got.Float32s(); len(v) != 1 || v[0] != 10 {
			t.Errorf("reduce_sum of the buffer freed meanwhile = %v; want [10], not zeros", v)
		}
		eventually(t, "the buffer is freed when the kernel ends", func() bool { n, _ := w.backend.Buffers(); return n == 0 })
	})

	// Finding 9, client: one oversized call on the shared stream failed
	// every other call in flight (Unknown: EOF).
	t.Run("finding9_oversized_call_fails_alone", func(t *testing.T) {
		laptop := w.client(t, "laptop")
		h := w.backend.hold(t, "transpose")
		done := make(chan error, 1)
		go func() {
			_, err := laptop.Compute(ctx, "transpose", f32([]int64{2, 3}))
			done <- err
		}()
		h.wait(t, 1)
		_, err := laptop.Compute(ctx, "relu", f32([]int64{gpusvc.DefaultMaxRequestBytes/4 + 1}))
		wantCode(t, err, codes.ResourceExhausted, "over the host's max_request")
		h.open()
		if err := <-done; err != nil {
			t.Errorf("the call in flight beside the oversized one: %v", err)
		}
	})
}

// TestDevicesReportsLimitsAndLoad: Devices tells a caller its limits (what
// its client sizes requests and the stream by) and the host's load, from
// counters (issue 15's placement needs them).
func TestDevicesReportsLimitsAndLoad(t *testing.T) {
	w := startHostile(t, "pair")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pair := w.client(t, "pair")
	h := w.backend.hold(t, "transpose")
	done := make(chan error, 1)
	go func() {
		_, err := pair.Compute(ctx, "transpose", f32([]int64{2, 2}))
		done <- err
	}()
	h.wait(t, 1)
	res, err := pair.Devices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h.open()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	l, load := res.GetLimits(), res.GetLoad()
	if l.GetMaxConcurrent() != 2 || l.GetStreamWindow() != 4 || l.GetMaxRequestBytes() != gpusvc.DefaultMaxRequestBytes {
		t.Errorf("limits %v; want max_concurrent 2, stream_window 4, max_request_bytes the host's", l)
	}
	if load.GetCallsInFlight() < 2 || load.GetStreams() < 2 || load.GetConns() != 1 || load.GetMemoryBudgetBytes() != hostileMaxMemory {
		t.Errorf("load %v; want the held call and this one in flight, on one connection, and the budget", load)
	}
	if d := res.GetDevices(); len(d) != 1 || d[0].GetUuid() != testUUID {
		t.Errorf("devices %v", d)
	}
}

// refusalBurst mirrors the server's burst of refusal records per caller.
const refusalBurst = 20

func fileSize(t testing.TB, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// TestStreamConcurrent: calls on one stream run concurrently up to the
// caller's max_concurrent, each cancellable by its id and bounded by its
// deadline, none touching another (issue 13, item 6).
func TestStreamConcurrent(t *testing.T) {
	w := startHostile(t, "laptop", "pair")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	laptop := w.client(t, "laptop")
	transpose := func(ctx context.Context, c *gpusvc.Client) error {
		got, err := c.Compute(ctx, "transpose", f32([]int64{2, 3}, 1, 2, 3, 4, 5, 6))
		if err == nil && fmt.Sprint(got.Float32s()) != "[1 4 2 5 3 6]" {
			err = fmt.Errorf("transpose = %v", got.Float32s())
		}
		return err
	}

	t.Run("concurrent", func(t *testing.T) {
		h := w.backend.hold(t, "transpose")
		const n = 8
		errs := make(chan error, n)
		for range n {
			go func() { errs <- transpose(ctx, laptop) }()
		}
		h.wait(t, n) // all n in the backend at once, on one stream
		h.open()
		for range n {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("cancel one", func(t *testing.T) {
		h := w.backend.hold(t, "transpose")
		cctx, ccancel := context.WithCancel(ctx)
		cancelled := make(chan error, 1)
		go func() { cancelled <- transpose(cctx, laptop) }()
		other := make(chan error, 1)
		go func() { other <- transpose(ctx, laptop) }()
		h.wait(t, 2)
		ccancel()
		wantCode(t, <-cancelled, codes.Canceled, "")
		if err := <-h.ended; !errors.Is(err, context.Canceled) {
			t.Errorf("on the host the cancelled call ended with %v; want context.Canceled", err)
		}
		h.open()
		if err := <-other; err != nil {
			t.Errorf("the other call: %v", err)
		}
	})

	t.Run("deadline", func(t *testing.T) {
		h := w.backend.hold(t, "transpose")
		dctx, dcancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer dcancel()
		err := transpose(dctx, laptop)
		if c := status.Code(err); c != codes.DeadlineExceeded {
			t.Errorf("a call past its deadline: %v; want DeadlineExceeded", err)
		}
		select {
		case err := <-h.ended:
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
				t.Errorf("on the host the call ended with %v", err)
			}
		case <-ctx.Done():
			t.Fatal("the host kept running a call past its deadline")
		}
	})

	t.Run("max_concurrent runs two, queues the rest", func(t *testing.T) {
		pair := w.client(t, "pair")
		h := w.backend.hold(t, "transpose")
		const n = 3
		errs := make(chan error, n)
		for range n {
			go func() { errs <- transpose(ctx, pair) }()
		}
		h.wait(t, 2)
		eventually(t, "the third call waits on the host", func() bool { return w.srv.Load().CallsQueued == 1 })
		select {
		case <-h.entered:
			t.Fatal("a third call ran beside two under max_concurrent = 2")
		default:
		}
		h.open()
		for range n {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
	})
}
