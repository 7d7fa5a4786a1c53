//go:build soak

package gpusvc_test

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/policy"
)

// `make soak` (SOAK=duration): not part of `make test`.

var (
	soakDuration = flag.Duration("soak.duration", 3*time.Minute, "how long TestSoak runs")
	soakClients  = flag.Int("soak.clients", 64, "clients, each on its own connection")
)

// soakPolicies are the policies the soak reloads in turn: the limits and
// classes change under the clients' feet; the last is invalid and must be
// refused with the one before staying in force.
var soakPolicies = []string{`
version = 1
class "interactive" {
  dscp     = "AF41"
  priority = 1
}
rule "team" {
  subjects     = ["node0", "node1", "node2", "node3", "node4", "node5"]
  gpus         = ["*"]
  kernels      = ["*"]
  class        = "interactive"
  idle_timeout = "5s"
}
rule "tight" {
  subjects       = ["node6"]
  gpus           = ["*"]
  kernels        = ["matrix_mul", "relu", "saxpy"]
  max_memory     = "1MiB"
  max_concurrent = 4
  rate           = 500
  burst          = 100
  idle_timeout   = "5s"
}
`, `
version = 1
rule "team" {
  subjects     = ["node0", "node1", "node2", "node3", "node4", "node5"]
  gpus         = ["0"]
  kernels      = ["*"]
  rate         = 2000
  burst        = 500
  idle_timeout = "5s"
}
rule "tight" {
  subjects       = ["node6"]
  gpus           = ["*"]
  kernels        = ["matrix_mul", "relu"]
  max_memory     = "512KiB"
  max_concurrent = 2
  idle_timeout   = "5s"
}
`, `
version = 1
rule "broken" {
  subjects = ["node0"
`}

// soakNodes: 8 tailnet nodes; node7 is in no policy. Clients are spread
// over them, each with its own connection.
const soakNodes = 8

// TestSoak runs *soakClients clients against a host on the embedded
// tailnet for *soakDuration: valid calls (results checked), malformed
// ones, cancelled ones and buffer traffic, while the policy is reloaded
// every two seconds. It prints the calls, wrong results (must be 0),
// errors by code, p50/p99 of valid calls, the process's peak RSS, and
// buffers and goroutines at the end against the start.
func TestSoak(t *testing.T) {
	names := make([]string, soakNodes+1)
	names[0] = "gpu-host"
	for i := range soakNodes {
		names[i+1] = "node" + strconv.Itoa(i)
	}
	_, nodes := overlaytest.StartNodes(t, names...)
	dir := t.TempDir()
	polPath := filepath.Join(dir, "policy.hcl")
	if err := os.WriteFile(polPath, []byte(soakPolicies[0]), 0o600); err != nil {
		t.Fatal(err)
	}
	store, err := policy.NewStore(polPath, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	backend := cpu.New()
	var records atomic.Int64
	srv, err := gpusvc.NewServer(gpusvc.Config{
		Backend: backend, WhoIs: nodes[0].WhoIs, Policy: store.Current, Host: "gpu-host",
		MaxMemory: 256 << 20, OnCall: func(gpusvc.CallRecord) { records.Add(1) },
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := nodes[0].Listen("tcp", ":"+strconv.Itoa(gpusvc.DefaultPort))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() {
		srv.Stop()
		<-served
	}()
	startGoroutines := serviceGoroutines()
	startBuffers, _ := backend.Buffers()

	ctx, cancel := context.WithTimeout(context.Background(), *soakDuration)
	defer cancel()
	var (
		wg      sync.WaitGroup
		reloads atomic.Int64
		refused atomic.Int64
	)
	wg.Go(func() { // policy reloads, every two seconds
		tick := time.NewTicker(2 * time.Second)
		defer tick.Stop()
		for i := 1; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			os.WriteFile(polPath, []byte(soakPolicies[i%len(soakPolicies)]), 0o600)
			if err := store.Reload(); err != nil {
				refused.Add(1)
			} else {
				reloads.Add(1)
			}
		}
	})
	stats := newSoakStats()
	for i := range *soakClients {
		n := nodes[1+i%soakNodes]
		wg.Go(func() {
			c := dialAttack(t, n)
			defer c.Close()
			sc := &soakClient{c: c, rnd: rand.New(rand.NewPCG(uint64(i), 7)), stats: stats, local: cpu.New()}
			sc.run(ctx)
		})
	}
	wg.Wait()

	// The clients are gone: everything they held goes.
	var endBuffers, endSessions int
	deadline := time.Now().Add(30 * time.Second)
	for {
		endSessions, _ = srv.Sessions()
		endBuffers, _ = backend.Buffers()
		if endSessions == 0 && endBuffers == startBuffers && serviceGoroutines() <= startGoroutines+1 || time.Now().After(deadline) {
			break
		}
		<-time.After(100 * time.Millisecond) // sessions idle out (5s)
	}
	endGoroutines := serviceGoroutines()
	p50, p99 := stats.percentiles()
	t.Logf("soak: %d clients on %d nodes for %v", *soakClients, soakNodes, *soakDuration)
	t.Logf("calls: %d (%d records), wrong results: %d", stats.calls.Load(), records.Load(), stats.wrong.Load())
	t.Logf("errors by code: %s", stats.byCode())
	t.Logf("valid calls: p50 %v, p99 %v", p50, p99)
	t.Logf("policy reloads: %d applied, %d refused (the invalid one)", reloads.Load(), refused.Load())
	t.Logf("peak RSS (host and clients, one process): %s", peakRSS())
	t.Logf("buffers: %d at the start, %d at the end; sessions at the end: %d", startBuffers, endBuffers, endSessions)
	t.Logf("service goroutines: %d at the start, %d at the end", startGoroutines, endGoroutines)
	if stats.wrong.Load() != 0 {
		t.Errorf("%d wrong results", stats.wrong.Load())
	}
	if endBuffers != startBuffers || endSessions != 0 {
		t.Errorf("left behind: %d buffers, %d sessions", endBuffers-startBuffers, endSessions)
	}
	if endGoroutines > startGoroutines+1 {
		buf := make([]byte, 4<<20)
		var left []string
		for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
			if !strings.Contains(g, "gpusvc_test.") && (strings.Contains(g, "google.golang.org/grpc") || strings.Contains(g, "gpumesh/gpusvc.")) {
				left = append(left, g)
			}
		}
		t.Errorf("service goroutines: %d at the start, %d at the end:\n%s", startGoroutines, endGoroutines, strings.Join(left, "\n\n"))
	}
	if n := stats.byCodeCount(codes.Internal, codes.Unknown, codes.DataLoss); n != 0 {
		t.Errorf("%d calls failed as the host's fault", n)
	}
}

// peakRSS is the process's peak resident set (VmHWM).
func peakRSS() string {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmHWM:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

type soakStats struct {
	calls, wrong atomic.Int64
	mu           sync.Mutex
	codes        map[codes.Code]int64 // guarded by mu
	lat          []time.Duration      // of valid calls; guarded by mu
}

func newSoakStats() *soakStats { return &soakStats{codes: map[codes.Code]int64{}} }

func (s *soakStats) note(err error, valid time.Duration) {
	s.calls.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.codes[status.Code(err)]++
	if err == nil && valid > 0 {
		s.lat = append(s.lat, valid)
	}
}

func (s *soakStats) percentiles() (p50, p99 time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.lat) == 0 {
		return 0, 0
	}
	slices.Sort(s.lat)
	return s.lat[len(s.lat)/2], s.lat[len(s.lat)*99/100]
}

func (s *soakStats) byCode() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var parts []string
	for c, n := range s.codes {
		parts = append(parts, fmt.Sprintf("%v %d", c, n))
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}

func (s *soakStats) byCodeCount(cs ...codes.Code) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for _, c := range cs {
		n += s.codes[c]
	}
	return n
}

// unavailable reports (and forgets) whether the client's last call found
// the host unavailable.
func (s *soakStats) unavailable(c *soakClient) bool {
	u := c.lastUnavailable
	c.lastUnavailable = false
	return u
}

type soakClient struct {
	lastUnavailable bool
	c               *gpusvc.Client
	rnd             *rand.Rand
	stats           *soakStats
	local           *cpu.Backend
	sess            uint64
	bufs            map[uint64][]byte
}

func (s *soakClient) note(err error, valid time.Duration) {
	s.lastUnavailable = status.Code(err) == codes.Unavailable
	s.stats.note(err, valid)
}

func (s *soakClient) run(ctx context.Context) {
	s.bufs = map[uint64][]byte{}
	for ctx.Err() == nil {
		if s.stats.unavailable(s) {
			// Refused at the handshake (node7, whom the policy does not
			// know, may hold two connections): try again later.
			select {
			case <-ctx.Done():
			case <-time.After(250 * time.Millisecond):
			}
		}
		switch r := s.rnd.IntN(20); {
		case r < 12:
			s.valid(ctx)
		case r < 15:
			s.invalid(ctx)
		case r < 17:
			s.cancelled(ctx)
		default:
			s.buffers(ctx)
		}
	}
	if s.sess != 0 && s.rnd.IntN(2) == 0 { // the others idle out
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s.c.CloseSession(cctx, s.sess)
		cancel()
	}
}

func (s *soakClient) tensor(shape ...int64) kernel.Arg {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(s.rnd.IntN(9) - 4)
	}
	return kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32(shape, v)}
}

func (s *soakClient) valid(ctx context.Context) {
	d := func() int64 { return int64(1 + s.rnd.IntN(24)) }
	var k string
	var args []kernel.Arg
	switch s.rnd.IntN(3) {
	case 0:
		m, kk, n := d(), d(), d()
		k, args = "matrix_mul", []kernel.Arg{s.tensor(m, kk), s.tensor(kk, n)}
	case 1:
		n := d() * 8
		k, args = "saxpy", []kernel.Arg{{Kind: kernel.ArgScalar, Scalar: 3}, s.tensor(n), s.tensor(n)}
	default:
		k, args = "relu", []kernel.Arg{s.tensor(d() * 8)}
	}
	t0 := time.Now()
	got, err := s.c.Compute(ctx, k, args...)
	lat := time.Since(t0)
	if ctx.Err() != nil {
		return // the soak's end, not a call's outcome
	}
	s.note(err, lat)
	if err == nil {
		shape, _ := kernel.Check(k, args)
		want, _ := s.local.Compute(context.Background(), gpusvc.Call{Kernel: k, Args: args, OutShape: shape})
		if !bytes.Equal(got.Data, want.Data) {
			s.stats.wrong.Add(1)
		}
	}
}

func (s *soakClient) invalid(ctx context.Context) {
	var err error
	switch s.rnd.IntN(4) {
	case 0:
		_, err = s.c.Compute(ctx, "matrix_mul", s.tensor(2, 3), s.tensor(4, 5))
	case 1:
		_, err = s.c.Compute(ctx, strings.Repeat("x", 1+s.rnd.IntN(300)), s.tensor(4))
	case 2: // a host killer
		const n = 1 << 16
		col := kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.Tensor{DType: kernel.Float32, Shape: []int64{n, 1}, Data: make([]byte, 4*n)}}
		row := kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.Tensor{DType: kernel.Float32, Shape: []int64{1, n}, Data: make([]byte, 4*n)}}
		_, err = s.c.Compute(ctx, "matrix_mul", col, row)
	default:
		_, err = s.c.API().Compute(ctx, &pb.ComputeRequest{Kernel: "relu", Gpu: "7", Args: gpusvc.ArgsToPB([]kernel.Arg{s.tensor(4)})})
	}
	if ctx.Err() == nil {
		s.note(err, 0)
	}
}

func (s *soakClient) cancelled(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, time.Duration(s.rnd.IntN(3000))*time.Microsecond)
	defer cancel()
	_, err := s.c.Compute(cctx, "matrix_mul", s.tensor(64, 64), s.tensor(64, 64))
	if ctx.Err() == nil {
		s.note(err, 0)
	}
}

func (s *soakClient) buffers(ctx context.Context) {
	if s.sess == 0 {
		sess, err := s.c.OpenSession(ctx)
		if ctx.Err() != nil {
			return
		}
		s.note(err, 0)
		if err != nil {
			return
		}
		s.sess = sess.ID
	}
	data := make([]byte, 1+s.rnd.IntN(64<<10))
	for i := range data {
		data[i] = byte(s.rnd.IntN(256))
	}
	id, err := s.c.Upload(ctx, s.sess, "", uint64(len(data)), bytes.NewReader(data))
	if ctx.Err() != nil {
		return
	}
	s.note(err, 0)
	if status.Code(err) == codes.NotFound {
		s.sess = 0 // idled out, or closed under a reload's shorter timeout
		return
	}
	if err != nil {
		return
	}
	var back bytes.Buffer
	_, err = s.c.Read(ctx, s.sess, id, 0, 0, &back)
	if ctx.Err() != nil {
		return
	}
	s.note(err, 0)
	if err == nil && !bytes.Equal(back.Bytes(), data) {
		s.stats.wrong.Add(1)
	}
	err = s.c.Free(ctx, s.sess, id)
	if ctx.Err() == nil {
		s.note(err, 0)
	}
}
