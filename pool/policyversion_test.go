package pool_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/gpumesh/gpumesh/policy"
	"github.com/gpumesh/gpumesh/pool"
)

// laptopMatmulOnly admits the laptop (its probes are answered) but allows
// it matrix_mul only: relu is denied.
const laptopMatmulOnly = `
version = 1
rule "laptop" {
  subjects = ["laptop"]
  kernels  = ["matrix_mul"]
  gpus     = ["*"]
}
`

// reload puts src in force on th: the file is replaced whole (the host's
// watch never reads half of it), then reloaded.
func (th *tailnetHost) reload(t *testing.T, src string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(th.policyPath), ".policy.new")
	if err := os.WriteFile(tmp, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, th.policyPath); err != nil {
		t.Fatal(err)
	}
	if err := th.host.ReloadPolicy(); err != nil {
		t.Fatalf("reload: %v", err)
	}
}

// waitPolicy waits for the pool to see host ready, with the policy
// version of src in force (the digest of its source).
func waitPolicy(t *testing.T, p *pool.Pool, host, src string) {
	t.Helper()
	pol, err := policy.Parse("policy.hcl", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	v := pol.Digest()
	waitHosts(t, p, host+" ready under policy "+v, func(hs map[string]pool.HostInfo) bool {
		h := hs[host]
		return h.State == pool.StateReady && h.PolicyVersion == v
	})
}

// TestReloadReachesPlacement runs a pool whose cached policy answers
// would last an hour, on a real host of the embedded tailnet. The host
// reloads its policy, from allowing the laptop relu to denying it and
// back: each time, once a probe has seen the new policy version, the
// pool's placement follows the new policy, asking the host again, without
// a call being refused first.
func TestReloadReachesPlacement(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	laptop, hosts := startTailnet(ctx, t, map[string]string{"gpu-a": allowLaptop})
	var asks atomic.Int64
	cfg := pool.WithAskHooks(pool.Config{
		Target: "tag:gpu", Network: laptop,
		RefreshInterval: 250 * time.Millisecond, ProbeTimeout: 3 * time.Second,
		DownAfter: time.Minute, ExplainTTL: time.Hour,
	}, func(string) { asks.Add(1) }, nil)
	p, err := pool.Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	// placed checks where the pool places relu now, and how many times
	// it has asked the host's policy so far.
	placed := func(step string, allowed bool, wantAsks int64) {
		t.Helper()
		pl := p.Explain(ctx, "relu")
		if got := pl.Pick == "gpu-a"; got != allowed {
			t.Fatalf("%s: relu placed on %q (%s); want allowed on gpu-a %v", step, pl.Pick, pl.Why, allowed)
		}
		_, err := p.Compute(ctx, "relu", vec(4))
		if allowed && err != nil {
			t.Fatalf("%s: relu: %v", step, err)
		}
		if !allowed && !errors.Is(err, pool.ErrNoHost) {
			t.Fatalf("%s: relu: got %v; want %v (placement refuses it, no call is sent)", step, err, pool.ErrNoHost)
		}
		if n := asks.Load(); n != wantAsks {
			t.Fatalf("%s: the host's policy was asked %d times; want %d", step, n, wantAsks)
		}
	}
	seen := func(src string) { t.Helper(); waitPolicy(t, p, "gpu-a", src) }

	seen(allowLaptop)
	placed("first policy", true, 1)
	placed("first policy, the answer cached", true, 1)

	hosts["gpu-a"].reload(t, laptopMatmulOnly)
	seen(laptopMatmulOnly)
	placed("after the reload denying relu", false, 2)
	placed("after the reload denying relu, the answer cached", false, 2)

	hosts["gpu-a"].reload(t, allowLaptop)
	seen(allowLaptop)
	placed("after the reload allowing relu again", true, 3)
}

// TestAnswerOfOldPolicyNotKept holds the host's answer to the pool's
// question (in the pool's gRPC client, after the host answered) while the
// host reloads its policy and a probe sees the new version: that answer,
// given under the old policy, serves the placement that asked, and is not
// kept; the next placement asks again and follows the new policy.
func TestAnswerOfOldPolicyNotKept(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	p, gpuA, h, asks := heldPool(ctx, t, newHolder("/Explain", false))
	h.arm()
	first := make(chan pool.Placement, 1)
	go func() { first <- p.Explain(ctx, "relu") }()
	h.wait(ctx, t)
	gpuA.reload(t, laptopMatmulOnly)
	waitPolicy(t, p, "gpu-a", laptopMatmulOnly)
	h.release()
	if pl := <-first; pl.Pick != "gpu-a" {
		t.Fatalf("the placement asking under the old policy picked %q (%s); want gpu-a, as the old policy allowed", pl.Pick, pl.Why)
	}
	if pl := p.Explain(ctx, "relu"); pl.Pick != "" {
		t.Fatalf("after the reload relu is placed on %q: the old policy's answer was kept", pl.Pick)
	}
	if n := asks.Load(); n != 2 {
		t.Fatalf("the host's policy was asked %d times; want 2 (once per policy)", n)
	}
}

// TestAnswerOfUnseenPolicyNotKept holds the pool's probe of a host (in
// its gRPC client, before it is sent) while the host reloads its policy:
// the pool's questions meanwhile get the new policy's answers, which
// placement follows but does not keep, since no probe has seen that
// policy in force; once the probe goes through, answers are kept again.
func TestAnswerOfUnseenPolicyNotKept(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	p, gpuA, h, asks := heldPool(ctx, t, newHolder("/Devices", true))
	h.arm()
	h.wait(ctx, t) // a probe, not sent yet
	gpuA.reload(t, laptopMatmulOnly)
	for i := range 2 {
		if pl := p.Explain(ctx, "relu"); pl.Pick != "" {
			t.Fatalf("after the reload relu is placed on %q (%s)", pl.Pick, pl.Why)
		}
		if n := asks.Load(); n != int64(i+1) {
			t.Fatalf("placement %d under a policy no probe has seen: the host's policy asked %d times; want %d (not kept)", i+1, n, i+1)
		}
	}
	h.release()
	waitPolicy(t, p, "gpu-a", laptopMatmulOnly)
	for range 2 {
		if pl := p.Explain(ctx, "relu"); pl.Pick != "" {
			t.Fatalf("after the probe relu is placed on %q (%s)", pl.Pick, pl.Why)
		}
	}
	if n := asks.Load(); n != 3 {
		t.Fatalf("once a probe saw the new policy: the host's policy asked %d times in all; want 3 (the answer kept)", n)
	}
}

// holder holds one unary call of a method in the pool's gRPC client, once
// armed: before it is sent, or after its answer came back.
type holder struct {
	method   string
	before   bool
	armed    atomic.Bool
	held     chan struct{} // closed when a call is held
	released chan struct{} // closed to let it go on
}

func newHolder(method string, before bool) *holder {
	return &holder{method: method, before: before, held: make(chan struct{}), released: make(chan struct{})}
}

func (h *holder) arm()     { h.armed.Store(true) }
func (h *holder) release() { close(h.released) }

// wait waits for a call to be held.
func (h *holder) wait(ctx context.Context, t *testing.T) {
	t.Helper()
	select {
	case <-h.held:
	case <-ctx.Done():
		t.Fatalf("no %s call was made", h.method)
	}
}

func (h *holder) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoke grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	hold := func() {
		if strings.HasSuffix(method, h.method) && h.armed.CompareAndSwap(true, false) {
			close(h.held)
			select {
			case <-h.released:
			case <-ctx.Done():
			}
		}
	}
	if h.before {
		hold()
	}
	err := invoke(ctx, method, req, reply, cc, opts...)
	if !h.before {
		hold()
	}
	return err
}

// heldPool starts a tailnet with gpu-a allowing the laptop every kernel,
// and the laptop's pool of tag:gpu, whose clients go through h, with
// answers that would be kept an hour, and whose probes and questions wait
// long for a held call. It returns once gpu-a is ready; asks counts the
// questions to gpu-a's policy.
func heldPool(ctx context.Context, t *testing.T, h *holder) (p *pool.Pool, gpuA *tailnetHost, _ *holder, asks *atomic.Int64) {
	t.Helper()
	laptop, hosts := startTailnet(ctx, t, map[string]string{"gpu-a": allowLaptop})
	asks = new(atomic.Int64)
	cfg := pool.WithAskHooks(pool.Config{
		Target: "tag:gpu", Network: laptop,
		RefreshInterval: 250 * time.Millisecond, ProbeTimeout: time.Minute,
		DownAfter: 2 * time.Minute, ExplainTTL: time.Hour,
		GRPCOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(h.intercept)},
	}, func(string) { asks.Add(1) }, nil)
	p, err := pool.Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		select {
		case <-h.released:
		default:
			h.release() // before Close, which waits for the held call
		}
		p.Close()
	})
	waitPolicy(t, p, "gpu-a", allowLaptop)
	return p, hosts["gpu-a"], h, asks
}
