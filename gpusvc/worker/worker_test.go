package worker_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/gpusvc/worker"
	"github.com/gpumesh/gpumesh/gpusvc/worker/standin"
)

// workerBin is the gpumesh-gpu binary: $GPUMESH_WORKER_BIN (a prebuilt
// one, on a GPU host without Go: scripts/gpu-check.sh), or else built by
// TestMain without -tags cuda.
var workerBin = os.Getenv("GPUMESH_WORKER_BIN")

func TestMain(m *testing.M) {
	if workerBin != "" {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "gpumesh-gpu-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	workerBin = filepath.Join(dir, "gpumesh-gpu")
	out, err := exec.Command("go", "build", "-o", workerBin, "github.com/gpumesh/gpumesh/cmd/gpumesh-gpu").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build gpumesh-gpu: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// events collects a supervisor's events for tests to wait on.
type events struct {
	mu sync.Mutex
	ch map[string]chan worker.Key
}

func watch(s *worker.Supervisor) *events {
	e := &events{ch: make(map[string]chan worker.Key)}
	worker.SetTestHook(s, func(ev string, k worker.Key) { e.of(ev) <- k })
	return e
}

func (e *events) of(ev string) chan worker.Key {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ch[ev] == nil {
		e.ch[ev] = make(chan worker.Key, 64)
	}
	return e.ch[ev]
}

// wait waits for ev on k's worker.
func (e *events) wait(t *testing.T, ev string, k worker.Key) {
	t.Helper()
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	for {
		select {
		case got := <-e.of(ev):
			if got == k {
				return
			}
		case <-timeout.C:
			t.Fatalf("no %q event for %v", ev, k)
		}
	}
}

func startStandIn(t *testing.T, mod func(*worker.Config)) *worker.Supervisor {
	t.Helper()
	cfg := worker.Config{
		Path: workerBin, Args: []string{"--stand-in"}, IdleTimeout: -1,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := worker.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func relu(t *testing.T, s *worker.Supervisor, ctx context.Context) error {
	t.Helper()
	x := kernel.NewFloat32([]int64{4}, []float32{-1, 2, -3, 4})
	out, err := s.Compute(ctx, gpusvc.Call{Kernel: "relu", Args: []kernel.Arg{{Kind: kernel.ArgTensor, Tensor: x}}, OutShape: []int64{4}})
	if err != nil {
		return err
	}
	if got := out.Float32s(); fmt.Sprint(got) != "[0 2 0 4]" {
		t.Fatalf("relu = %v", got)
	}
	return nil
}

func alice() context.Context { return gpusvc.WithCaller(context.Background(), "alice") }
func bob() context.Context   { return gpusvc.WithCaller(context.Background(), "bob") }

var (
	aliceKey = worker.Key{Caller: "alice"}
	bobKey   = worker.Key{Caller: "bob"}
)

// pidOf returns the pid of k's worker, starting it with a call.
func pidOf(t *testing.T, s *worker.Supervisor, before []int) int {
	t.Helper()
	for _, p := range s.Pids() {
		found := false
		for _, q := range before {
			found = found || p == q
		}
		if !found {
			return p
		}
	}
	t.Fatal("no new worker")
	return 0
}

func TestBuiltinsMatchCPU(t *testing.T) {
	s := startStandIn(t, nil)
	ref := cpu.New()
	a := kernel.NewFloat32([]int64{3, 5}, []float32{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15})
	b := kernel.NewFloat32([]int64{5, 2}, []float32{1, -1, 2, -2, 3, -3, 4, -4, 5, -5})
	v := kernel.NewFloat32([]int64{5}, []float32{1, -2, 3, -4, 5})
	ten := func(x kernel.Tensor) kernel.Arg { return kernel.Arg{Kind: kernel.ArgTensor, Tensor: x} }
	for _, tc := range []struct {
		kernel string
		args   []kernel.Arg
	}{
		{"matrix_mul", []kernel.Arg{ten(a), ten(b)}},
		{"saxpy", []kernel.Arg{{Kind: kernel.ArgScalar, Scalar: 2}, ten(v), ten(v)}},
		{"reduce_sum", []kernel.Arg{ten(v)}},
		{"softmax", []kernel.Arg{ten(a)}},
		{"relu", []kernel.Arg{ten(v)}},
		{"transpose", []kernel.Arg{ten(a)}},
	} {
		t.Run(tc.kernel, func(t *testing.T) {
			shape, err := kernel.Check(tc.kernel, tc.args)
			if err != nil {
				t.Fatal(err)
			}
			c := gpusvc.Call{Kernel: tc.kernel, Args: tc.args, OutShape: shape}
			want, err := ref.Compute(context.Background(), c)
			if err != nil {
				t.Fatal(err)
			}
			got, err := s.Compute(alice(), c)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Data, want.Data) || fmt.Sprint(got.Shape) != fmt.Sprint(want.Shape) {
				t.Errorf("got %v %v, want %v %v", got.Shape, got.Float32s(), want.Shape, want.Float32s())
			}
		})
	}
}

func TestErrorsKeepTheirSentinels(t *testing.T) {
	s := startStandIn(t, nil)
	_, err := s.Compute(alice(), gpusvc.Call{Kernel: "relu", GPU: 3})
	if !errors.Is(err, gpusvc.ErrNoDevice) {
		t.Errorf("gpu 3: %v, want ErrNoDevice", err)
	}
	if err := s.WriteAt(alice(), 12345, 0, []byte{1}); !errors.Is(err, gpusvc.ErrNoBuffer) {
		t.Errorf("unknown buffer: %v, want ErrNoBuffer", err)
	}
	h, err := s.Alloc(alice(), 0, 8)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.WriteAt(alice(), h, 4, make([]byte, 8)); !errors.Is(err, kernel.ErrInvalid) {
		t.Errorf("write past the end: %v, want kernel.ErrInvalid", err)
	}
	if _, err := s.Alloc(alice(), 0, -1); !errors.Is(err, kernel.ErrInvalid) {
		t.Errorf("alloc -1: %v, want kernel.ErrInvalid", err)
	}
	// A buffer is its caller's: bob cannot compute on alice's buffer.
	x := kernel.Arg{Kind: kernel.ArgBuffer, Buffer: h, Tensor: kernel.Tensor{DType: kernel.Float32, Shape: []int64{2}}}
	if _, err := s.Compute(bob(), gpusvc.Call{Kernel: "relu", Args: []kernel.Arg{x}, OutShape: []int64{2}}); !errors.Is(err, gpusvc.ErrNoBuffer) {
		t.Errorf("bob on alice's buffer: %v, want ErrNoBuffer", err)
	}
}

func TestBuffersRoundTrip(t *testing.T) {
	s := startStandIn(t, nil)
	const n = 3<<20 + 17
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(i * 7)
	}
	h, err := s.Alloc(alice(), 0, n)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < n; off += 1 << 20 {
		if err := s.WriteAt(alice(), h, int64(off), data[off:min(off+1<<20, n)]); err != nil {
			t.Fatal(err)
		}
	}
	got := make([]byte, n)
	if err := s.ReadAt(alice(), h, 0, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("buffer did not round-trip byte-exact")
	}
	// Compute on the resident buffer, into another.
	out, err := s.Alloc(alice(), 0, 16)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.WriteAt(alice(), h, 0, kernel.Float32Bytes([]float32{-1, 2, -3, 4})); err != nil {
		t.Fatal(err)
	}
	x := kernel.Arg{Kind: kernel.ArgBuffer, Buffer: h, Tensor: kernel.Tensor{DType: kernel.Float32, Shape: []int64{4}}}
	if _, err := s.Compute(alice(), gpusvc.Call{Kernel: "relu", Args: []kernel.Arg{x}, Out: out, OutShape: []int64{4}}); err != nil {
		t.Fatal(err)
	}
	res := make([]byte, 16)
	if err := s.ReadAt(alice(), out, 0, res); err != nil {
		t.Fatal(err)
	}
	if got := (kernel.Tensor{Data: res}).Float32s(); fmt.Sprint(got) != "[0 2 0 4]" {
		t.Errorf("relu into a buffer = %v", got)
	}
	for _, b := range []uint64{h, out} {
		if err := s.Free(alice(), b); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Free(alice(), h); !errors.Is(err, gpusvc.ErrNoBuffer) {
		t.Errorf("second free: %v, want ErrNoBuffer", err)
	}
}

// A crashing worker fails its caller's calls in flight with Unavailable
// naming the crash, loses that caller's buffers, and is restarted for the
// next call; another caller's worker and buffers are untouched.
func TestCrashHurtsOnlyItsCaller(t *testing.T) {
	s := startStandIn(t, nil)
	ev := watch(s)

	if err := relu(t, s, bob()); err != nil {
		t.Fatal(err)
	}
	bobPid := pidOf(t, s, nil)
	bobBuf, err := s.Alloc(bob(), 0, 4)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.WriteAt(bob(), bobBuf, 0, []byte("bob!")); err != nil {
		t.Fatal(err)
	}
	aliceBuf, err := s.Alloc(alice(), 0, 4)
	if err != nil {
		t.Fatal(err)
	}
	mod, _, _, err := s.LoadModule(alice(), 0, gpusvc.ModuleSource{PTX: []byte("// stand-in")})
	if err != nil {
		t.Fatal(err)
	}
	launch := func(fn string) error {
		return s.Launch(alice(), gpusvc.Launch{Module: mod, Function: fn})
	}

	// One of alice's calls is in flight when another makes her worker exit.
	blocked := make(chan error, 1)
	go func() { blocked <- launch(standin.FuncBlock) }()
	for worker.InFlight(s, aliceKey) == 0 {
		runtimeGosched()
	}
	err = launch(standin.FuncExit)
	for _, err := range []error{err, <-blocked} {
		if status.Code(err) != codes.Unavailable || !errors.Is(err, worker.ErrCrashed) || !strings.Contains(err.Error(), "exiting as asked") {
			t.Errorf("call in the crash: %v (code %v), want Unavailable naming the crash", err, status.Code(err))
		}
	}
	ev.wait(t, "crashed", aliceKey)

	// Alice's buffer went with her worker.
	if err := s.ReadAt(alice(), aliceBuf, 0, make([]byte, 4)); status.Code(err) != codes.DataLoss || !errors.Is(err, worker.ErrLost) {
		t.Errorf("alice's buffer after the crash: %v, want DataLoss", err)
	}
	if err := s.Free(alice(), aliceBuf); err != nil {
		t.Errorf("free a lost buffer: %v", err)
	}
	// Bob's worker and buffer are untouched.
	got := make([]byte, 4)
	if err := s.ReadAt(bob(), bobBuf, 0, got); err != nil || string(got) != "bob!" {
		t.Errorf("bob's buffer after alice's crash: %q, %v", got, err)
	}
	if !alive(bobPid) {
		t.Error("bob's worker died with alice's")
	}
	// Alice's next call restarts her worker; her module is loaded again.
	if err := relu(t, s, alice()); err != nil {
		t.Fatalf("alice after the restart: %v", err)
	}
	if err := launch(standin.FuncNop); err != nil {
		t.Fatalf("alice's module after the restart: %v", err)
	}
	st := s.Stats()
	if st.Crashes != 1 || st.Restarts != 1 || st.Live != 3 {
		t.Errorf("stats %+v, want 1 crash, 1 restart, 3 live (probe, alice, bob)", st)
	}
}

// A kernel fault answers its call with Aborted, then the worker exits (its
// context is lost) and the next call gets a fresh one.
func TestFaultAbortsTheCallAndRestarts(t *testing.T) {
	s := startStandIn(t, nil)
	ev := watch(s)
	mod, _, _, err := s.LoadModule(alice(), 0, gpusvc.ModuleSource{CUDA: "__global__ void f() {}"})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Launch(alice(), gpusvc.Launch{Module: mod, Function: standin.FuncFault})
	if status.Code(err) != codes.Aborted || !errors.Is(err, worker.ErrFault) {
		t.Fatalf("fault: %v (code %v), want Aborted", err, status.Code(err))
	}
	ev.wait(t, "crashed", aliceKey)
	if err := relu(t, s, alice()); err != nil {
		t.Fatal(err)
	}
	if err := relu(t, s, bob()); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Crashes != 1 || st.Restarts != 1 {
		t.Errorf("stats %+v, want 1 crash and 1 restart", st)
	}
}

// After two crashes in a row a caller's worker waits out a backoff; its
// calls fail fast meanwhile, and other callers are served.
func TestCrashLoopBacksOff(t *testing.T) {
	s := startStandIn(t, func(c *worker.Config) { c.Backoff = time.Hour })
	ev := watch(s)
	mod, _, _, err := s.LoadModule(alice(), 0, gpusvc.ModuleSource{PTX: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := s.Launch(alice(), gpusvc.Launch{Module: mod, Function: standin.FuncExit}); !errors.Is(err, worker.ErrCrashed) {
			t.Fatalf("crash: %v", err)
		}
		ev.wait(t, "crashed", aliceKey)
	}
	err = relu(t, s, alice())
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "crashed 2 times in a row") {
		t.Errorf("during backoff: %v, want Unavailable naming the crash loop", err)
	}
	if err := relu(t, s, bob()); err != nil {
		t.Errorf("bob during alice's backoff: %v", err)
	}
	if st := s.Stats(); st.Crashes != 2 || st.Restarts != 1 {
		t.Errorf("stats %+v, want 2 crashes, 1 restart", st)
	}
}

// A worker that cannot start (here: built without CUDA, run without
// --stand-in) is reported with its own reason, and nothing is left running.
func TestStartFailureSaysWhy(t *testing.T) {
	if os.Getenv("GPUMESH_WORKER_BIN") != "" {
		t.Skip("a prebuilt worker may well start")
	}
	before := children(t)
	_, err := worker.Start(context.Background(), worker.Config{Path: workerBin})
	var se *worker.StartError
	if !errors.As(err, &se) || !errors.Is(err, worker.ErrStart) {
		t.Fatalf("Start: %v, want a *StartError", err)
	}
	if !strings.Contains(se.Reason, "built without CUDA support") || !strings.Contains(se.Reason, "exit status 1") {
		t.Errorf("reason %q does not say why", se.Reason)
	}
	if got := children(t); len(got) > len(before) {
		t.Errorf("children left: %v (before: %v)", got, before)
	}
	if _, err := worker.Start(context.Background(), worker.Config{Path: "/nonexistent/gpumesh-gpu"}); !errors.Is(err, worker.ErrStart) {
		t.Errorf("missing binary: %v, want ErrStart", err)
	}
}

func TestCloseLeavesNoChildren(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	before := children(t)
	s, err := worker.Start(context.Background(), worker.Config{Path: workerBin, Args: []string{"--stand-in"}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := relu(t, s, gpusvc.WithCaller(context.Background(), strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Alloc(alice(), 0, 64); err != nil {
		t.Fatal(err)
	}
	if n := len(children(t)) - len(before); n != 5 {
		t.Errorf("%d workers running, want 5", n)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := children(t); len(got) != len(before) {
		t.Errorf("after Close: children %v, before %v", got, before)
	}
	if err := s.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close: %v, want net.ErrClosed", err)
	}
	if err := relu(t, s, alice()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("call after Close: %v, want net.ErrClosed", err)
	}
}

func TestIdleWorkersAreReaped(t *testing.T) {
	s := startStandIn(t, func(c *worker.Config) { c.IdleTimeout = 20 * time.Millisecond })
	ev := watch(s)
	if err := relu(t, s, bob()); err != nil {
		t.Fatal(err)
	}
	h, err := s.Alloc(alice(), 0, 4) // a worker holding a buffer stays
	if err != nil {
		t.Fatal(err)
	}
	ev.wait(t, "reaped", bobKey)
	if err := s.WriteAt(alice(), h, 0, []byte("here")); err != nil {
		t.Errorf("alice's buffer after reaping: %v", err)
	}
	if err := relu(t, s, bob()); err != nil {
		t.Errorf("bob after his worker was reaped: %v", err)
	}
	if st := s.Stats(); st.Reaped < 1 || st.Crashes != 0 {
		t.Errorf("stats %+v, want reaped workers, no crash", st)
	}
}

// The main binary must never link gorgonia.org/cu: its init exits the
// process on a machine without a GPU.
func TestMainBinaryDoesNotImportCU(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go toolchain")
	}
	for _, pkg := range []string{"github.com/gpumesh/gpumesh/cmd/gpumesh", "github.com/gpumesh/gpumesh/cmd/gpumesh-gpu"} {
		out, err := exec.Command("go", "list", "-deps", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", pkg, err, out)
		}
		if strings.Contains(string(out), "gorgonia.org/cu") {
			t.Errorf("%s imports gorgonia.org/cu without -tags cuda", pkg)
		}
	}
}

// children lists this process's child processes.
func children(t *testing.T) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Skip("no /proc")
	}
	self := os.Getpid()
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(self) {
			out = append(out, pid)
		}
	}
	return out
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

// faultPTX stores to address 8: an illegal address.
const faultPTX = `
.version 6.0
.target sm_50
.address_size 64
.visible .entry fault() {
	.reg .b64 rd<2>;
	.reg .b32 r<2>;
	mov.u64 rd1, 8;
	mov.u32 r1, 1;
	st.global.u32 [rd1], r1;
	ret;
}
`

// On a GPU host, with the cuda-built worker as $GPUMESH_WORKER_BIN: a
// caller's faulting kernel gets Aborted, their worker restarts, and
// another caller's worker, buffer and calls are untouched.
func TestCUDAFaultHurtsOnlyItsCaller(t *testing.T) {
	if os.Getenv("GPUMESH_WORKER_BIN") == "" {
		t.Skip("needs $GPUMESH_WORKER_BIN, a cuda-built gpumesh-gpu, on a GPU host")
	}
	s, err := worker.Start(context.Background(), worker.Config{Path: workerBin, IdleTimeout: -1})
	if err != nil {
		t.Fatalf("the CUDA worker does not start: %v", err)
	}
	defer s.Close()
	info := s.Info(context.Background())
	t.Logf("%s: %d device(s), nvrtc %s", info.Status, len(info.Devices), info.NVRTC)
	if info.Backend != "cuda" {
		t.Fatalf("backend %q, want cuda", info.Backend)
	}
	ev := watch(s)
	bobBuf, err := s.Alloc(bob(), 0, 4)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.WriteAt(bob(), bobBuf, 0, []byte("bob!")); err != nil {
		t.Fatal(err)
	}
	if err := relu(t, s, bob()); err != nil {
		t.Fatal(err)
	}
	mod, _, _, err := s.LoadModule(alice(), 0, gpusvc.ModuleSource{PTX: []byte(faultPTX)})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Launch(alice(), gpusvc.Launch{Module: mod, Function: "fault", Grid: [3]uint32{1, 1, 1}, Block: [3]uint32{1, 1, 1}})
	if status.Code(err) != codes.Aborted || !errors.Is(err, worker.ErrFault) {
		t.Fatalf("faulting kernel: %v (code %v), want Aborted", err, status.Code(err))
	}
	t.Logf("alice's fault: %v", err)
	ev.wait(t, "crashed", aliceKey)
	got := make([]byte, 4)
	if err := s.ReadAt(bob(), bobBuf, 0, got); err != nil || string(got) != "bob!" {
		t.Errorf("bob's buffer after alice's fault: %q, %v", got, err)
	}
	if err := relu(t, s, bob()); err != nil {
		t.Errorf("bob after alice's fault: %v", err)
	}
	if err := relu(t, s, alice()); err != nil {
		t.Errorf("alice after her worker restarted: %v", err)
	}
	if st := s.Stats(); st.Crashes != 1 || st.Restarts != 1 {
		t.Errorf("stats %+v, want 1 crash, 1 restart", st)
	}
}
