package gpusvc_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
	"github.com/gpumesh/gpumesh/policy"
)

var (
	attackCalls = flag.Int("attack.calls", 600, "calls TestRandomAttack makes, all callers together")
	attackSeed  = flag.Uint64("attack.seed", 12, "TestRandomAttack's random seed")
)

const attackPolicy = `
version = 1
rule "team" {
  subjects     = ["laptop", "other"]
  gpus         = ["*"]
  kernels      = ["*"]
  idle_timeout = "2s"
}
rule "tight" {
  subjects       = ["tight"]
  gpus           = ["*"]
  kernels        = ["matrix_mul", "relu"]
  max_memory     = "256KiB"
  max_concurrent = 2
  rate           = 200
  burst          = 50
  idle_timeout   = "2s"
}
`

// The attack world's bounds, and the bounds on the live heap (what each
// garbage collection finds reachable), measured over a baseline taken
// once the host and its callers' transport are up and earlier tests'
// garbage and pooled buffers are collected (settledHeap). The embedded
// tailnet of five nodes alone is ~165 MiB, most of it wireguard-go's
// 64 KiB packet buffers, and a test before this one can leave hundreds of
// MiB in sync.Pools (its closed nodes' packet buffers) that the next
// collection still counts live: an absolute bound on the process's heap
// measured those more than the host.
//
// attackGrowthBound bounds the peak over the baseline: the host's budget
// (64 MiB: buffers, outputs until their reply is sent, queued requests);
// requests in flight and gRPC's windows on both sides (4 callers × 16
// streams × 1 MiB at most); the clients' copies of replies (each at most
// 8 MiB, the largest result); on the tailnet, its packets in flight
// (wireguard-go takes a 64 KiB buffer for every packet, from a pool
// without a cap, which keeps them one collection more); and the Go
// runtime's slack. Measured: 95–200 MiB on the tailnet. Before the fixes
// one call asked for 64 TiB.
//
// attackHeldBound bounds what is left over the baseline once the clients
// are gone, their sessions idled out and the test's call records let go,
// the host still up, on loopback: -3 to +24 KiB measured, +309 KiB in a
// process's first attack (lazy initialisation). The requests carry
// 2.4–3.2 MiB (with the replies 8–9 MiB): a host that kept every request's
// bytes fails it (4 MiB held, tried). On the tailnet what is left is
// mostly wireguard-go's: each peer routine keeps a scratch array of up to
// 128 references into its largest batch so far (up to 8 MiB each; 25–42
// MiB measured), so there it is logged, not bounded; the connections the
// host accepted must be freed on both.
const (
	attackMaxMemory   = 64 << 20
	attackMaxRequest  = 1 << 20
	attackMaxResponse = 8 << 20
	attackMaxStreams  = 16
	attackGrowthBound = 320 << 20
	attackHeldBound   = 1 << 20
)

// TestRandomAttack drives a real host on the embedded tailnet with random
// kernels, shapes, dtypes, ids, strings, sizes and cancellations from four
// identities (two allowed, one tight, one the policy does not know) for a
// fixed count of calls, and checks that the host never dies, its heap grows
// by less than attackGrowthBound, every call is recorded once with its
// caller, no buffer, session, stream, connection or goroutine is left (nor
// held) when the clients are gone, and valid calls give the right results.
func TestRandomAttack(t *testing.T) {
	if testing.Short() {
		t.Skip("joins an embedded tailnet")
	}
	r := runAttack(t, true)
	t.Logf("heap after the attack, the clients gone: %+d KiB over the baseline, mostly the tailnet's (not bounded: see attackHeldBound); the calls carried %d KiB",
		(r.held-r.base)>>10, r.carried>>10)
}

// TestRandomAttackLoopback runs the attack of TestRandomAttack on loopback
// TCP, each caller from its own address, which the host's WhoIs maps to
// the caller's name, and checks in addition that the host holds no more
// than attackHeldBound of heap once its clients are gone: without the
// tailnet's packet buffers, what the host keeps is what the heap shows.
func TestRandomAttackLoopback(t *testing.T) {
	r := runAttack(t, false)
	if held := r.held - r.base; held > attackHeldBound {
		t.Errorf("the host holds %d KiB more heap than before the attack, its clients gone; the bound is %d KiB (the calls carried %d KiB, their requests %d KiB)",
			held>>10, attackHeldBound>>10, r.carried>>10, r.requests>>10)
	} else {
		t.Logf("heap after the attack, the clients gone: %+d KiB over the baseline (bound %d KiB); the calls carried %d KiB, their requests %d KiB",
			held>>10, attackHeldBound>>10, r.carried>>10, r.requests>>10)
	}
	if r.requests < 2*attackHeldBound {
		t.Logf("the requests carried less than twice attackHeldBound (-attack.calls?): a host that kept them all might pass")
	}
}

// attackResult is what an attack did to the live heap, and what its calls
// carried.
type attackResult struct {
	base, peak, held int64 // before, at the peak, after (the clients gone)
	carried          int64 // the calls' requests and replies, bytes
	requests         int64 // the requests alone
}

// runAttack starts the attack world, runs the attack, checks it and the
// heap's growth, and reports the heap.
func runAttack(t *testing.T, overTailnet bool) attackResult {
	// Every call carries this deadline: a stream the host refuses must
	// hold nothing until it passes (TestRefusedStreamFreesItsConn).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	w := startAttack(t, overTailnet)
	r := attackResult{base: settledHeap()}
	heap := watchHeap(t)
	t.Logf("seed %d, %d calls", *attackSeed, *attackCalls)
	r.carried, r.requests = w.attack(ctx, t)
	r.peak = heap.stop()
	r.held = settledHeap()
	if grew := r.peak - r.base; grew > attackGrowthBound {
		t.Errorf("the heap grew by %d MiB over its %d MiB before the attack (peak %d MiB); the bound is %d MiB",
			grew>>20, r.base>>20, r.peak>>20, attackGrowthBound>>20)
	} else {
		t.Logf("heap: %d MiB before the attack, peak %d MiB: grew by %d MiB (bound %d MiB)",
			r.base>>20, r.peak>>20, grew>>20, attackGrowthBound>>20)
	}
	return r
}

// attackWorld is the attack's host, how its callers reach it, and what it
// records.
type attackWorld struct {
	callers []string
	peers   []attackPeer // by caller
	backend *cpu.Backend
	rec     *recorder
	srv     *gpusvc.Server
	ln      *freeWatchListener
}

// attackPeer is how one caller reaches the host.
type attackPeer struct {
	target string // the host's address, as the caller dials it
	dial   func(ctx context.Context, network, addr string) (net.Conn, error)
}

func tailnetPeer(n *tsnet.Node) attackPeer {
	return attackPeer{target: fmt.Sprintf("gpu-host:%d", gpusvc.DefaultPort), dial: n.Dial}
}

// startAttack starts the attack's host, its callers on the embedded
// tailnet (overTailnet), or on loopback TCP, each from its own address,
// which the host's WhoIs maps to its name.
func startAttack(t *testing.T, overTailnet bool) *attackWorld {
	t.Helper()
	w := &attackWorld{callers: []string{"laptop", "other", "tight", "stranger"}, backend: cpu.New(), rec: &recorder{}}
	pol, err := policy.Parse("attack.hcl", []byte(attackPolicy))
	if err != nil {
		t.Fatal(err)
	}
	cfg := gpusvc.Config{
		Backend: w.backend, Policy: func() *policy.Policy { return pol }, Host: "gpu-host",
		MaxMemory: attackMaxMemory, MaxRequestBytes: attackMaxRequest, MaxResponseBytes: attackMaxResponse,
		MaxStreamsPerCaller: attackMaxStreams,
		OnCall:              w.rec.add,
	}
	var ln net.Listener
	if overTailnet {
		_, nodes := overlaytest.StartNodes(t, append([]string{"gpu-host"}, w.callers...)...)
		for _, n := range nodes[1:] {
			w.peers = append(w.peers, tailnetPeer(n))
		}
		cfg.WhoIs = nodes[0].WhoIs
		ln, err = nodes[0].Listen("tcp", ":"+strconv.Itoa(gpusvc.DefaultPort))
	} else {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ids := map[netip.Addr]overlay.Identity{}
		for i, name := range w.callers {
			addr := netip.AddrFrom4([4]byte{127, 0, 0, byte(10 + i)})
			ids[addr] = overlay.Identity{Node: name, FQDN: name + ".loopback", StableID: "n" + name, Addrs: []netip.Addr{addr}}
			d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: addr.AsSlice()}}
			w.peers = append(w.peers, attackPeer{target: ln.Addr().String(), dial: d.DialContext})
		}
		cfg.WhoIs = func(_ context.Context, remote string) (overlay.Identity, error) {
			ap, err := netip.ParseAddrPort(remote)
			if id, ok := ids[ap.Addr()]; ok && err == nil {
				return id, nil
			}
			return overlay.Identity{}, fmt.Errorf("%w: %s", overlay.ErrUnknownPeer, remote)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	w.srv, err = gpusvc.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w.ln = &freeWatchListener{Listener: ln}
	served := make(chan error, 1)
	go func() { served <- w.srv.Serve(w.ln) }()
	t.Cleanup(func() {
		w.srv.Stop()
		<-served
	})
	return w
}

// attack runs the attackers, then checks that every call was recorded once
// with its caller and that nothing is left or held when they are gone. It
// returns the bytes the calls carried, and those of their requests.
func (w *attackWorld) attack(ctx context.Context, t *testing.T) (carried, requests int64) {
	mark := w.rec.mark()
	baseGoroutines := serviceGoroutines()
	var (
		wg      sync.WaitGroup
		tallies = make([]*tally, len(w.callers))
		issued  atomic.Int64
	)
	for i, name := range w.callers {
		tallies[i] = newTally(name)
		wg.Go(func() {
			a := &attacker{t: t, name: name, peer: w.peers[i], tally: tallies[i], issued: &issued,
				rnd: rand.New(rand.NewPCG(*attackSeed, uint64(i))), local: cpu.New()}
			a.run(ctx, *attackCalls)
		})
	}
	wg.Wait()

	// The host is alive and answers.
	probe := dialPeer(t, w.peers[0])
	_, err := probe.Devices(ctx)
	if err != nil {
		t.Fatalf("the host after the attack: %v", err)
	}
	tallies[0].note("Devices", err, false)
	probe.Close()

	// Every call once, with its caller. A call cancelled by its client
	// may never have reached the host: those make the only slack.
	// Refusals beyond a caller's record rate are counted in a later
	// record, within a second.
	got := map[string]map[string]int64{}
	count := func() {
		got = map[string]map[string]int64{}
		for _, r := range w.rec.since(mark) {
			if got[r.Caller.Node] == nil {
				got[r.Caller.Node] = map[string]int64{}
			}
			got[r.Caller.Node][r.Method] += 1 + r.Suppressed
		}
	}
	settled := func() bool {
		count()
		for _, tl := range tallies {
			for m, n := range tl.snapshot() {
				if got[tl.name][m] < n {
					return false
				}
			}
		}
		return true
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for wait := time.NewTimer(20 * time.Second); !settled(); {
		select {
		case <-tick.C:
			continue
		case <-wait.C:
		}
		break // the check below says what is missing
	}
	for _, r := range w.rec.since(mark) {
		if r.Caller.Node == "" || r.Caller.StableID == "" {
			t.Errorf("a record without its caller: %+v", r)
		}
		carried += r.BytesIn + r.BytesOut
		requests += r.BytesIn
	}
	for _, tl := range tallies {
		methods := map[string]bool{}
		for m := range tl.sure {
			methods[m] = true
		}
		for m := range got[tl.name] {
			methods[m] = true
		}
		for m := range methods {
			n, sure, maybe := got[tl.name][m], tl.sure[m], tl.maybe[m]
			if n < sure || n > sure+maybe {
				t.Errorf("%s %s: %d records for %d calls that reached the host (+%d cancelled that may not have)", tl.name, m, n, sure, maybe)
			}
		}
	}
	for _, tl := range tallies {
		t.Logf("%s: %s", tl.name, tl)
	}
	// The records are the test's, not the host's: let them go, so that
	// the heap left after the attack is what the host holds.
	w.rec.mu.Lock()
	w.rec.recs = nil
	w.rec.mu.Unlock()

	// Nothing is left when the clients are gone: sessions idle out (2s),
	// buffers are freed, streams and connections close.
	eventually(t, "no session, buffer, stream or connection is left", func() bool {
		s, b := w.srv.Sessions()
		nb, _ := w.backend.Buffers()
		l := w.srv.Load()
		return s == 0 && b == 0 && nb == 0 && l.Streams == 0 && l.Conns == 0 && l.MemoryHeld == 0 && l.CallsInFlight == 0
	})
	// The service's and gRPC's goroutines (the embedded tailnet's own come
	// and go with its peers): only the session reaper, started with the
	// first session, is new.
	for wait := time.NewTimer(20 * time.Second); serviceGoroutines() > baseGoroutines+1; {
		select {
		case <-tick.C:
			continue
		case <-wait.C:
		}
		buf := make([]byte, 4<<20)
		t.Fatalf("%d service goroutines, %d before the attack:\n%s", serviceGoroutines(), baseGoroutines, buf[:runtime.Stack(buf, true)])
	}
	// Nor does anything hold a connection the host accepted.
	w.ln.waitFreed(t)
	return carried, requests
}

// settledHeap collects garbage until what is left is live, and returns the
// live heap: two collections, as the first moves what sync.Pools hold (the
// tailnet's packet buffers, gRPC's) to their victim caches and the second
// frees it.
func settledHeap() int64 {
	runtime.GC()
	runtime.GC()
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(sample)
	return int64(sample[0].Value.Uint64())
}

// serviceGoroutines counts the goroutines running gpusvc or gRPC code,
// the test's own aside.
func serviceGoroutines() int {
	buf := make([]byte, 4<<20)
	n := 0
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if strings.Contains(g, "gpusvc_test.") {
			continue
		}
		if strings.Contains(g, "google.golang.org/grpc") || strings.Contains(g, "gpumesh/gpusvc.") {
			n++
		}
	}
	return n
}

// heapWatch samples the live heap until stopped.
type heapWatch struct {
	stopc chan struct{}
	done  chan int64
}

func watchHeap(t testing.TB) *heapWatch {
	h := &heapWatch{stopc: make(chan struct{}), done: make(chan int64, 1)}
	go func() {
		var peak int64
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		// The heap found live by each garbage collection: what the
		// process holds, not the garbage a collection has yet to free.
		sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		for {
			metrics.Read(sample)
			peak = max(peak, int64(sample[0].Value.Uint64()))
			select {
			case <-h.stopc:
				h.done <- peak
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() { h.stop() })
	return h
}

func (h *heapWatch) stop() int64 {
	select {
	case <-h.stopc:
	default:
		close(h.stopc)
	}
	v := <-h.done
	h.done <- v
	return v
}

// tally counts one attacker's calls by method: those that surely reached
// the host, and those cancelled by the client that may not have.
type tally struct {
	name  string
	mu    sync.Mutex
	sure  map[string]int64
	maybe map[string]int64
	codes map[codes.Code]int
}

func newTally(name string) *tally {
	return &tally{name: name, sure: map[string]int64{}, maybe: map[string]int64{}, codes: map[codes.Code]int{}}
}

// note counts a finished call of method that ended with err; cancelled
// says the client cancelled it.
func (tl *tally) note(method string, err error, cancelled bool) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	c := status.Code(err)
	tl.codes[c]++
	if cancelled && (c == codes.Canceled || c == codes.DeadlineExceeded) {
		tl.maybe[method]++
		return
	}
	tl.sure[method]++
}

// snapshot copies the calls that surely reached the host, by method.
func (tl *tally) snapshot() map[string]int64 {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	out := map[string]int64{}
	for m, n := range tl.sure {
		out[m] = n
	}
	return out
}

func (tl *tally) String() string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	var parts []string
	for c, n := range tl.codes {
		parts = append(parts, fmt.Sprintf("%v %d", c, n))
	}
	return strings.Join(parts, ", ")
}

func dialAttack(t testing.TB, n *tsnet.Node) *gpusvc.Client {
	return dialPeer(t, tailnetPeer(n))
}

func dialPeer(t testing.TB, p attackPeer) *gpusvc.Client {
	c, err := gpusvc.NewClient(p.target, p.dial)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// attacker is one identity's random caller.
type attacker struct {
	t      *testing.T
	name   string
	peer   attackPeer
	tally  *tally
	issued *atomic.Int64
	rnd    *rand.Rand
	local  *cpu.Backend // computes the expected results

	c        *gpusvc.Client
	api      pb.GPUClient
	raw      *grpc.ClientConn // a second connection, for rawCall
	sessions []uint64
	buffers  map[uint64][]byte // by buffer id in sessions[0]: the bytes written
	learned  bool              // the client asked Devices for its limits
}

// allowedCodes are the answers a malformed or refused call may get: never
// Internal, Unknown, Unavailable or DataLoss.
var allowedCodes = map[codes.Code]bool{
	codes.OK: true, codes.InvalidArgument: true, codes.NotFound: true, codes.OutOfRange: true,
	codes.ResourceExhausted: true, codes.PermissionDenied: true, codes.Unimplemented: true,
	codes.FailedPrecondition: true, codes.Canceled: true, codes.DeadlineExceeded: true,
}

func (a *attacker) run(ctx context.Context, total int) {
	a.c = dialPeer(a.t, a.peer)
	defer a.c.Close()
	a.api = a.c.API()
	a.buffers = map[uint64][]byte{}
	raw, err := grpc.NewClient("passthrough:///"+a.peer.target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return a.peer.dial(ctx, "tcp", addr) }))
	if err != nil {
		a.t.Fatal(err)
	}
	defer raw.Close()
	a.raw = raw
	if a.name != "stranger" {
		// The client learns its limits once; for the stranger each call
		// on the shared stream asks again and is refused.
		_, err := a.c.Limits(ctx)
		a.check("Devices", err, false)
		a.learned = true
	}
	for a.issued.Add(1) <= int64(total) {
		switch a.rnd.IntN(10) {
		case 0, 1, 2:
			a.validCompute(ctx)
		case 3:
			a.garbageCompute(ctx)
		case 4:
			a.cancelledCompute(ctx)
		case 5, 6:
			a.buffersOp(ctx)
		case 7:
			a.residentCompute(ctx)
		case 8:
			a.probe(ctx)
		case 9:
			if a.rnd.IntN(3) == 0 {
				a.rawCall(ctx)
			} else {
				a.streamGarbage(ctx)
			}
		}
	}
	// Close some sessions; leave the rest to idle out.
	for i, s := range a.sessions {
		if i%2 == 0 {
			_, err := a.api.CloseSession(ctx, &pb.CloseSessionRequest{Session: s})
			a.check("CloseSession", err, false)
		}
	}
}

// check counts a call and fails the test on an answer no call may get.
// gRPC itself answers Internal to a request it cannot decode, before the
// service sees it: that is the sender's fault, and allowed.
func (a *attacker) check(method string, err error, cancelled bool) {
	a.tally.note(method, err, cancelled)
	undecodable := status.Code(err) == codes.Internal && strings.Contains(err.Error(), "unmarshal")
	if c := status.Code(err); !allowedCodes[c] && !undecodable {
		a.t.Errorf("%s %s: %v", a.name, method, err)
	}
	if a.name == "stranger" && status.Code(err) != codes.PermissionDenied && !cancelled {
		a.t.Errorf("stranger %s: %v; want PermissionDenied", method, err)
	}
}

// onStream counts a call made on the client's shared stream. A client
// that has not learned its limits (the stranger's: refused each time)
// asks Devices first, and sends no compute.
func (a *attacker) onStream(err error, cancelled bool) {
	if !a.learned {
		a.check("Devices", err, cancelled)
		return
	}
	a.check("Compute", err, cancelled)
}

var builtinKernels = []string{"matrix_mul", "saxpy", "reduce_sum", "softmax", "relu", "transpose"}

// randomValid returns a valid call of a random built-in on small tensors.
func (a *attacker) randomValid() (string, []kernel.Arg) {
	dim := func() int64 { return int64(1 + a.rnd.IntN(12)) }
	tensor := func(shape ...int64) kernel.Arg {
		n := int64(1)
		for _, d := range shape {
			n *= d
		}
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(a.rnd.IntN(17) - 8)
		}
		return kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32(shape, v)}
	}
	k := builtinKernels[a.rnd.IntN(len(builtinKernels))]
	switch k {
	case "matrix_mul":
		m, kk, n := dim(), dim(), dim()
		return k, []kernel.Arg{tensor(m, kk), tensor(kk, n)}
	case "saxpy":
		n := dim() * 4
		return k, []kernel.Arg{{Kind: kernel.ArgScalar, Scalar: float64(a.rnd.IntN(5))}, tensor(n), tensor(n)}
	case "softmax", "transpose":
		return k, []kernel.Arg{tensor(dim(), dim())}
	default:
		return k, []kernel.Arg{tensor(dim() * 3)}
	}
}

// allowed says whether the policy lets this attacker run k.
func (a *attacker) allowed(k string) bool {
	switch a.name {
	case "laptop", "other":
		return true
	case "tight":
		return k == "matrix_mul" || k == "relu"
	}
	return false
}

func (a *attacker) expect(k string, args []kernel.Arg) kernel.Tensor {
	shape, err := kernel.Check(k, args)
	if err != nil {
		a.t.Fatalf("a valid call is invalid: %v", err)
	}
	want, err := a.local.Compute(context.Background(), gpusvc.Call{Kernel: k, Args: args, OutShape: shape})
	if err != nil {
		a.t.Fatal(err)
	}
	return want
}

func (a *attacker) validCompute(ctx context.Context) {
	k, args := a.randomValid()
	got, err := a.c.Compute(ctx, k, args...)
	a.onStream(err, false)
	switch {
	case err == nil && !a.allowed(k):
		a.t.Errorf("%s ran %s, which its rule does not allow", a.name, k)
	case err == nil:
		if want := a.expect(k, args); !bytes.Equal(got.Data, want.Data) || fmt.Sprint(got.Shape) != fmt.Sprint(want.Shape) {
			a.t.Errorf("%s: wrong result of %s", a.name, k)
		}
	case a.allowed(k) && status.Code(err) != codes.ResourceExhausted:
		a.t.Errorf("%s: valid %s: %v", a.name, k, err)
	}
}

// randomString is up to n bytes of valid UTF-8, control characters and
// long runes included (a typed client cannot send anything else; see
// rawCall for what it cannot).
func (a *attacker) randomString(n int) string {
	var b strings.Builder
	for size := a.rnd.IntN(n + 1); b.Len() < size; {
		switch a.rnd.IntN(3) {
		case 0:
			b.WriteRune(rune(a.rnd.IntN(0x20)))
		case 1:
			b.WriteRune(rune(0x80 + a.rnd.IntN(0x10000-0x80-0x800)))
		default:
			b.WriteByte(byte('a' + a.rnd.IntN(26)))
		}
	}
	return b.String()
}

// rawBytes is up to n bytes of anything.
func (a *attacker) rawBytes(n int) []byte {
	b := make([]byte, a.rnd.IntN(n+1))
	for i := range b {
		b[i] = byte(a.rnd.IntN(256))
	}
	return b
}

// rawCall sends a hand-encoded request no typed client would: string
// fields that are not UTF-8, or a method the service does not have.
func (a *attacker) rawCall(ctx context.Context) {
	var req []byte
	req = protowire.AppendTag(req, 1, protowire.BytesType) // kernel
	req = protowire.AppendBytes(req, append([]byte{0xff, 0xfe}, a.rawBytes(300)...))
	if a.rnd.IntN(2) == 0 {
		req = protowire.AppendTag(req, 3, protowire.BytesType) // gpu
		req = protowire.AppendBytes(req, a.rawBytes(40))
	}
	method, name := "/gpumesh.v1.GPU/Compute", "Compute"
	switch a.rnd.IntN(4) {
	case 0:
		method, name = "/gpumesh.v1.GPU/Explain", "Explain"
	case 1:
		method, name = "/gpumesh.v1.GPU/X"+strconv.FormatUint(a.rnd.Uint64(), 36), "unknown"
	}
	var res []byte
	err := a.raw.Invoke(ctx, method, &req, &res, grpc.ForceCodecV2(rawCodec{}))
	a.check(name, err, false)
}

// rawCodec sends and receives messages as the bytes given.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return "proto" }

func (a *attacker) randomShape() []int64 {
	shape := make([]int64, a.rnd.IntN(12))
	for i := range shape {
		switch a.rnd.IntN(5) {
		case 0:
			shape[i] = -int64(a.rnd.IntN(1 << 20))
		case 1:
			shape[i] = int64(a.rnd.Uint64() >> 1)
		default:
			shape[i] = int64(a.rnd.IntN(64))
		}
	}
	return shape
}

func (a *attacker) garbageCompute(ctx context.Context) {
	if a.rnd.IntN(4) == 0 {
		// A host killer: an outer product whose output is up to 2^34
		// elements (64 GiB) from a request under 1 MiB.
		n := int64(1) << (9 + a.rnd.IntN(9))
		col := kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.Tensor{DType: kernel.Float32, Shape: []int64{n, 1}, Data: make([]byte, 4*n)}}
		row := kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.Tensor{DType: kernel.Float32, Shape: []int64{1, n}, Data: make([]byte, 4*n)}}
		_, err := a.api.Compute(ctx, &pb.ComputeRequest{Kernel: "matrix_mul", Args: gpusvc.ArgsToPB([]kernel.Arg{col, row})})
		a.check("Compute", err, false)
		return
	}
	req := &pb.ComputeRequest{Gpu: a.randomGPU()}
	if a.rnd.IntN(2) == 0 {
		req.Kernel = builtinKernels[a.rnd.IntN(len(builtinKernels))]
	} else {
		req.Kernel = a.randomString(300)
	}
	for range a.rnd.IntN(80) {
		switch a.rnd.IntN(4) {
		case 0:
			req.Args = append(req.Args, &pb.Arg{Value: &pb.Arg_Tensor{Tensor: &pb.Tensor{
				Dtype: pb.DType(a.rnd.IntN(9)), Shape: a.randomShape(), Data: make([]byte, a.rnd.IntN(4096))}}})
		case 1:
			req.Args = append(req.Args, &pb.Arg{Value: &pb.Arg_Buffer{Buffer: &pb.BufferRef{
				Id: a.rnd.Uint64N(8), Dtype: pb.DType(a.rnd.IntN(9)), Shape: a.randomShape()}}})
		case 2:
			req.Args = append(req.Args, &pb.Arg{})
		default:
			req.Args = append(req.Args, &pb.Arg{Value: &pb.Arg_Int{Int: a.rnd.Int64()}})
		}
	}
	if len(a.sessions) > 0 && a.rnd.IntN(2) == 0 {
		req.Session = a.sessions[a.rnd.IntN(len(a.sessions))]
	} else if a.rnd.IntN(3) == 0 {
		req.Session = a.rnd.Uint64()
	}
	if a.rnd.IntN(4) == 0 {
		req.OutBuffer = a.rnd.Uint64N(8)
	}
	_, err := a.api.Compute(ctx, req)
	a.check("Compute", err, false)
}

func (a *attacker) randomGPU() string {
	switch a.rnd.IntN(6) {
	case 0:
		return a.randomString(200)
	case 1:
		return []string{"0", "00", "+0", "-0", "1", "-1", "GPU-x"}[a.rnd.IntN(7)]
	}
	return ""
}

func (a *attacker) cancelledCompute(ctx context.Context) {
	k, args := a.randomValid()
	cctx, cancel := context.WithCancel(ctx)
	if a.rnd.IntN(2) == 0 {
		cancel()
	} else {
		time.AfterFunc(time.Duration(a.rnd.IntN(2000))*time.Microsecond, cancel)
	}
	defer cancel()
	if a.rnd.IntN(2) == 0 {
		_, err := a.api.Compute(cctx, &pb.ComputeRequest{Kernel: k, Args: gpusvc.ArgsToPB(args)})
		a.check("Compute", err, true)
		return
	}
	got, err := a.c.Compute(cctx, k, args...)
	a.onStream(err, true)
	if err == nil && a.allowed(k) {
		if want := a.expect(k, args); !bytes.Equal(got.Data, want.Data) {
			a.t.Errorf("%s: wrong result of a %s that was not cancelled in time", a.name, k)
		}
	}
}

// session returns one of the attacker's sessions, opening one sometimes.
func (a *attacker) session(ctx context.Context) uint64 {
	if len(a.sessions) == 0 || a.rnd.IntN(8) == 0 {
		res, err := a.api.OpenSession(ctx, &pb.OpenSessionRequest{})
		a.check("OpenSession", err, false)
		if err == nil {
			// The newest session is the one whose buffers are tracked.
			a.sessions = append([]uint64{res.GetSession()}, a.sessions...)
			a.buffers = map[uint64][]byte{}
		}
	}
	if len(a.sessions) == 0 {
		return a.rnd.Uint64()
	}
	return a.sessions[0]
}

func (a *attacker) buffersOp(ctx context.Context) {
	s := a.session(ctx)
	switch a.rnd.IntN(5) {
	case 0: // alloc, any size
		n := []uint64{0, 1, uint64(a.rnd.IntN(1 << 16)), 1 << 30, a.rnd.Uint64()}[a.rnd.IntN(5)]
		_, err := a.api.Alloc(ctx, &pb.AllocRequest{Session: s, Bytes: n, Gpu: a.randomGPU()})
		a.check("Alloc", err, false)
	case 1: // upload, then read back
		data := make([]byte, 1+a.rnd.IntN(200<<10))
		for i := range data {
			data[i] = byte(a.rnd.IntN(256))
		}
		id, err := a.c.Upload(ctx, s, "", uint64(len(data)), bytes.NewReader(data))
		if !a.learned {
			a.check("Devices", err, false) // asked for the limits, refused
			return
		}
		a.check("Write", err, false)
		if err == nil && len(a.sessions) > 0 && s == a.sessions[0] {
			a.buffers[id] = data
			var back bytes.Buffer
			_, err := a.c.Read(ctx, s, id, 0, 0, &back)
			a.check("Read", err, false)
			if err == nil && !bytes.Equal(back.Bytes(), data) {
				a.t.Errorf("%s: buffer %d did not read back byte-exact", a.name, id)
			}
		}
	case 2: // read at random places
		st, err := a.api.Read(ctx, &pb.ReadRequest{Session: s, Buffer: a.rnd.Uint64N(6), Offset: a.rnd.Uint64N(1 << 17),
			Length: []uint64{0, a.rnd.Uint64N(1 << 17), a.rnd.Uint64()}[a.rnd.IntN(3)], ChunkBytes: a.rnd.Uint32()})
		if err == nil {
			for err == nil {
				_, err = st.Recv()
			}
			if err == io.EOF {
				err = nil
			}
		}
		a.check("Read", err, false)
	case 3: // free something
		id := a.rnd.Uint64N(6)
		_, err := a.api.Free(ctx, &pb.FreeRequest{Session: s, Buffer: id})
		a.check("Free", err, false)
		if err == nil {
			delete(a.buffers, id)
		}
	case 4: // a write stream that lies
		st, err := a.api.Write(ctx)
		if err == nil {
			st.Send(&pb.WriteRequest{Session: s, Buffer: a.rnd.Uint64N(6), AllocBytes: a.rnd.Uint64N(3),
				Offset: a.rnd.Uint64N(1 << 20), Gpu: a.randomGPU(), Data: make([]byte, a.rnd.IntN(1<<16))})
			if a.rnd.IntN(2) == 0 {
				st.Send(&pb.WriteRequest{Session: s, Data: make([]byte, a.rnd.IntN(1<<16))})
			}
			_, err = st.CloseAndRecv()
		}
		a.check("Write", err, false)
	}
}

// residentCompute runs relu on a buffer written earlier, checking it, or
// names buffers with random shapes.
func (a *attacker) residentCompute(ctx context.Context) {
	s := a.session(ctx)
	for id, data := range a.buffers {
		n := int64(len(data) / 4)
		if n == 0 {
			break
		}
		shape := []int64{n}
		if a.rnd.IntN(3) == 0 {
			shape = a.randomShape()
		}
		res, err := a.api.Compute(ctx, &pb.ComputeRequest{Kernel: "relu", Session: s, Args: []*pb.Arg{{Value: &pb.Arg_Buffer{
			Buffer: &pb.BufferRef{Id: id, Shape: shape}}}}})
		a.check("Compute", err, false)
		if err == nil && fmt.Sprint(shape) == fmt.Sprint([]int64{n}) {
			arg := kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.Tensor{DType: kernel.Float32, Shape: shape, Data: data[:4*n]}}
			if want := a.expect("relu", []kernel.Arg{arg}); !bytes.Equal(res.GetOutputs()[0].GetData(), want.Data) {
				a.t.Errorf("%s: relu of buffer %d is wrong", a.name, id)
			}
		}
		return
	}
	_, err := a.api.Compute(ctx, &pb.ComputeRequest{Kernel: "relu", Session: s, Args: []*pb.Arg{{Value: &pb.Arg_Buffer{
		Buffer: &pb.BufferRef{Id: a.rnd.Uint64N(4), Shape: a.randomShape()}}}}})
	a.check("Compute", err, false)
}

func (a *attacker) probe(ctx context.Context) {
	if a.rnd.IntN(2) == 0 {
		_, err := a.api.Devices(ctx, &pb.DevicesRequest{})
		a.check("Devices", err, false)
		return
	}
	_, err := a.api.Explain(ctx, &pb.ExplainRequest{Kernel: a.randomString(200), Gpu: a.randomGPU()})
	a.check("Explain", err, false)
}

// streamGarbage opens a raw stream, sends random ids (repeated ones
// included), cancels some, and reads every answer.
func (a *attacker) streamGarbage(ctx context.Context) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := a.api.Stream(sctx)
	if err != nil {
		a.check("Stream", err, false)
		return
	}
	n := 1 + a.rnd.IntN(6)
	sent := 0
	for i := range n {
		k, args := a.randomValid()
		req := &pb.StreamRequest{Id: uint64(i), Compute: &pb.ComputeRequest{Kernel: k, Args: gpusvc.ArgsToPB(args)}}
		if a.rnd.IntN(4) == 0 {
			req.TimeoutMicros = a.rnd.Uint64N(5000)
		}
		if st.Send(req) != nil {
			break
		}
		sent++
		if a.rnd.IntN(3) == 0 {
			st.Send(&pb.StreamRequest{Id: a.rnd.Uint64N(uint64(n)), Cancel: true})
		}
	}
	st.CloseSend()
	answered := 0
	for {
		res, err := st.Recv()
		if err != nil {
			if err != io.EOF {
				a.check("Stream", err, false) // refused as a whole
			}
			break
		}
		answered++
		var cerr error
		if e := res.GetError(); e != nil {
			cerr = status.Error(codes.Code(e.GetCode()), e.GetMessage())
		}
		a.check("Compute", cerr, cerr != nil)
	}
	if answered != 0 && answered != sent {
		a.t.Errorf("%s: %d calls sent on a stream, %d answered", a.name, sent, answered)
	}
}
