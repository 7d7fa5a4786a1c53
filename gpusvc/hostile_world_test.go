package gpusvc_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/audit"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
	"github.com/gpumesh/gpumesh/policy"
)

// The hostile world: a GPU host on the embedded tailnet, serving a CPU
// backend that reports a UUID for its device and lets a test hold calls of
// a kernel in flight, with its call records kept in memory and written to
// a real audit log. Its clients play the attackers of issue 12.

const testUUID = "GPU-5e1f0000-aaaa-bbbb-cccc-000000000000"

const hostilePolicy = `
version = 1

rule "laptop" {
  subjects = ["laptop"]
  gpus     = ["*"]
  kernels  = ["*"]
}

# roamer may run everything, except relu on gpu 0 and saxpy on the GPU
# with this UUID: the same device, named two ways.
rule "roamer" {
  subjects = ["roamer"]
  gpus     = ["*"]
  kernels  = ["*"]
}
deny "no-relu-on-0" {
  subjects = ["roamer"]
  gpus     = ["0"]
  kernels  = ["relu"]
}
deny "no-saxpy-on-uuid" {
  subjects = ["roamer"]
  gpus     = ["` + testUUID + `"]
  kernels  = ["saxpy"]
}

# eager's matrix products are rate-limited; its relus are not.
rule "mm-slow" {
  subjects = ["eager"]
  gpus     = ["*"]
  kernels  = ["matrix_mul"]
  rate     = 1
  burst    = 1
}
rule "relu-free" {
  subjects = ["eager"]
  gpus     = ["*"]
  kernels  = ["relu"]
}

# observer may read metrics only: admitted, but no kernel, no buffer.
rule "observer" {
  subjects = ["observer"]
  gpus     = ["*"]
  kernels  = ["observe:metrics"]
}

rule "hog" {
  subjects = ["hog"]
  gpus     = ["*"]
  kernels  = ["*"]
}

# lost and found hold the same grant of every kernel, custom code and
# metrics; lost is a laptop reported lost, denied every kernel.
rule "grant-all" {
  subjects = ["lost", "found"]
  gpus     = ["*"]
  kernels  = ["*", "custom:ptx", "observe:metrics"]
}
deny "lost" {
  subjects = ["lost"]
  gpus     = ["*"]
  kernels  = ["*"]
}

rule "pair" {
  subjects       = ["pair"]
  gpus           = ["*"]
  kernels        = ["*"]
  max_concurrent = 2
}
`

// Bounds of the hostile world's server.
const (
	hostileMaxMemory  = 256 << 20
	hostileMaxStreams = 16
)

// hostileBackend is the CPU backend reporting testUUID for its device; a
// test may hold the calls of one kernel, or make them panic.
type hostileBackend struct {
	*cpu.Backend

	mu    sync.Mutex
	holds map[string]*hold // by kernel; guarded by mu
}

// hold keeps a kernel's calls in flight until released.
type hold struct {
	entered chan struct{} // one per call that reached the backend
	ended   chan error    // the context's error of each call that gave up
	release chan struct{}
	panics  bool
}

func (b *hostileBackend) Info(ctx context.Context) gpusvc.Info {
	info := b.Backend.Info(ctx)
	info.Devices[0].UUID = testUUID
	return info
}

// hold makes calls of kernelName wait until release is called (or their
// context ends).
func (b *hostileBackend) hold(t testing.TB, kernelName string) *hold {
	h := &hold{entered: make(chan struct{}, 256), ended: make(chan error, 256), release: make(chan struct{})}
	b.mu.Lock()
	b.holds[kernelName] = h
	b.mu.Unlock()
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { b.drop(kernelName, h) }) })
	return h
}

// panicOn makes calls of kernelName panic in the backend.
func (b *hostileBackend) panicOn(t testing.TB, kernelName string) {
	h := &hold{panics: true}
	b.mu.Lock()
	b.holds[kernelName] = h
	b.mu.Unlock()
	t.Cleanup(func() { b.drop(kernelName, h) })
}

func (b *hostileBackend) drop(kernelName string, h *hold) {
	b.mu.Lock()
	if b.holds[kernelName] == h {
		delete(b.holds, kernelName)
	}
	b.mu.Unlock()
	if h.release != nil {
		select {
		case <-h.release:
		default:
			close(h.release)
		}
	}
}

func (h *hold) open() { close(h.release) }

// wait waits until n calls have reached the backend.
func (h *hold) wait(t testing.TB, n int) {
	t.Helper()
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	for range n {
		select {
		case <-h.entered:
		case <-timeout.C:
			t.Fatalf("fewer than %d calls reached the backend", n)
		}
	}
}

func (b *hostileBackend) Compute(ctx context.Context, c gpusvc.Call) (kernel.Tensor, error) {
	b.mu.Lock()
	h := b.holds[c.Kernel]
	b.mu.Unlock()
	if h != nil {
		if h.panics {
			panic("hostile backend: " + c.Kernel)
		}
		h.entered <- struct{}{}
		select {
		case <-h.release:
		case <-ctx.Done():
			h.ended <- ctx.Err()
			return kernel.Tensor{}, ctx.Err()
		}
	}
	return b.Backend.Compute(ctx, c)
}

// recorder keeps the server's call records.
type recorder struct {
	mu   sync.Mutex
	recs []gpusvc.CallRecord // guarded by mu
}

func (r *recorder) add(rec gpusvc.CallRecord) {
	r.mu.Lock()
	r.recs = append(r.recs, rec)
	r.mu.Unlock()
}

// mark is the number of records so far; since(mark) those after it.
func (r *recorder) mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.recs)
}

func (r *recorder) since(mark int) []gpusvc.CallRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]gpusvc.CallRecord(nil), r.recs[mark:]...)
}

// attempts counts the calls records since mark stand for, each record
// counting itself and those it suppressed, by "caller/method/code".
func (r *recorder) attempts(mark int) map[string]int64 {
	out := map[string]int64{}
	for _, rec := range r.since(mark) {
		out[rec.Caller.Node+"/"+rec.Method+"/"+rec.Code.String()] += 1 + rec.Suppressed
	}
	return out
}

type hostileWorld struct {
	tn      *overlaytest.Tailnet
	host    *tsnet.Node
	nodes   map[string]*tsnet.Node
	backend *hostileBackend
	srv     *gpusvc.Server
	rec     *recorder
	audit   string // the audit log's path
}

// startHostile starts the hostile world with one node per client name.
func startHostile(t testing.TB, clients ...string) *hostileWorld {
	t.Helper()
	if testing.Short() {
		t.Skip("joins an embedded tailnet")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tn, err := overlaytest.Start(overlaytest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tn.Close() })
	pol, err := policy.Parse("hostile.hcl", []byte(hostilePolicy))
	if err != nil {
		t.Fatal(err)
	}
	w := &hostileWorld{tn: tn, nodes: map[string]*tsnet.Node{}, rec: &recorder{},
		backend: &hostileBackend{Backend: cpu.New(), holds: map[string]*hold{}}}
	names := append([]string{"gpu-host"}, clients...)
	nodes := make([]*tsnet.Node, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() { nodes[i], errs[i] = tn.Join(ctx, name) })
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
	w.audit = filepath.Join(t.TempDir(), "audit.log")
	log, err := audit.Open(w.audit, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	w.srv, err = gpusvc.NewServer(gpusvc.Config{
		Backend: w.backend, WhoIs: w.host.WhoIs, Policy: func() *policy.Policy { return pol }, Host: "gpu-host",
		MaxMemory: hostileMaxMemory, MaxStreamsPerCaller: hostileMaxStreams,
		OnCall: func(r gpusvc.CallRecord) {
			w.rec.add(r)
			log.Record(r)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := w.host.Listen("tcp", ":"+strconv.Itoa(gpusvc.DefaultPort))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		w.srv.Serve(ln)
	}()
	t.Cleanup(func() {
		w.srv.Stop()
		<-served
		log.Close()
	})
	return w
}

// client dials the host from node name, a new connection each time.
func (w *hostileWorld) client(t testing.TB, name string) *gpusvc.Client {
	t.Helper()
	c, err := gpusvc.NewClient(fmt.Sprintf("gpu-host:%d", gpusvc.DefaultPort), w.nodes[name].Dial)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// api is a raw client from node name: requests go out as the test writes
// them, with none of the client's own checks.
func (w *hostileWorld) api(t testing.TB, name string) pb.GPUClient { return w.client(t, name).API() }
