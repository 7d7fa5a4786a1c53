package pool_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/policy"
	"github.com/gpumesh/gpumesh/pool"
	"github.com/gpumesh/gpumesh/pool/pooltest"
)

// fast are timings for tests on loopback: quick probes, and a loss
// declared within a second or two, generous enough for a loaded machine.
func fast(target string, nw pool.Network) pool.Config {
	return pool.Config{
		Target: target, Network: nw,
		RefreshInterval: 100 * time.Millisecond, ProbeTimeout: time.Second,
		DownAfter: 2 * time.Second, RetryInterval: 300 * time.Millisecond, ForgetAfter: time.Second,
	}
}

// simNet starts hosts named names on a loopback network, each a simulated
// GPU taking delay per call, carrying tag:gpu.
func simNet(t testing.TB, delay time.Duration, names ...string) (*pooltest.Net, map[string]*pooltest.Host) {
	t.Helper()
	nw := pooltest.NewNet()
	t.Cleanup(nw.Close)
	hosts := make(map[string]*pooltest.Host)
	for _, n := range names {
		h, err := nw.StartHost(n, pooltest.NewSim(delay, 1), nil, "tag:gpu")
		if err != nil {
			t.Fatal(err)
		}
		hosts[n] = h
	}
	return nw, hosts
}

func startPool(t testing.TB, cfg pool.Config) *pool.Pool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := pool.Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// waitHosts waits, on the pool's change events, until cond holds for its
// hosts.
func waitHosts(t testing.TB, p *pool.Pool, what string, cond func(map[string]pool.HostInfo) bool) {
	t.Helper()
	deadline := time.After(time.Minute)
	for {
		ch := p.Changes()
		hs := make(map[string]pool.HostInfo)
		for _, h := range p.Hosts() {
			hs[h.Name] = h
		}
		if cond(hs) {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("waiting for %s: hosts now %+v", what, hs)
		}
	}
}

func state(name string, s pool.State) func(map[string]pool.HostInfo) bool {
	return func(hs map[string]pool.HostInfo) bool { h, ok := hs[name]; return ok && h.State == s }
}

func vec(n int) kernel.Arg {
	return kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32([]int64{int64(n)}, make([]float32, n))}
}

// denying is a policy allowing every built-in except kernelName to the
// pool's caller.
func denying(t testing.TB, kernelName string) *policy.Policy {
	t.Helper()
	src := fmt.Sprintf(`version = 1
rule "all" {
  subjects = ["*"]
  gpus     = ["*"]
  kernels  = ["*"]
}
deny "no-%[1]s" {
  subjects = [%[2]q]
  kernels  = [%[1]q]
}
`, kernelName, pooltest.Caller)
	p, err := policy.Parse("deny.hcl", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDiscoveryFollowsThePeerList(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	nw, _ := simNet(t, time.Millisecond, "gpu-a", "gpu-b")
	if _, err := nw.StartHost("laptop", pooltest.NewSim(time.Millisecond, 1), nil); err != nil {
		t.Fatal(err)
	}
	p := startPool(t, fast("tag:gpu", nw))
	names := func() []string {
		var out []string
		for _, h := range p.Hosts() {
			out = append(out, h.Name+"="+h.State.String())
		}
		return out
	}
	if got := strings.Join(names(), " "); got != "gpu-a=ready gpu-b=ready" {
		t.Fatalf("after Dial: %s, want gpu-a and gpu-b ready (laptop has no tag)", got)
	}
	// A host that joins later is found and probed, without a restart.
	c, err := nw.StartHost("gpu-c", pooltest.NewSim(time.Millisecond, 1), nil, "tag:gpu")
	if err != nil {
		t.Fatal(err)
	}
	waitHosts(t, p, "gpu-c to join", state("gpu-c", pool.StateReady))
	// One that leaves the peer list is down at once (lost: its work
	// ends), and forgotten after ForgetAfter.
	c.Leave()
	waitHosts(t, p, "gpu-c to be down", func(hs map[string]pool.HostInfo) bool {
		h, ok := hs["gpu-c"]
		return ok && h.State == pool.StateDown && strings.Contains(h.Err, "left the overlay")
	})
	waitHosts(t, p, "gpu-c to be forgotten", func(hs map[string]pool.HostInfo) bool { _, ok := hs["gpu-c"]; return !ok })
	// Back in the list, it is a member again.
	c.Return()
	waitHosts(t, p, "gpu-c to be back", state("gpu-c", pool.StateReady))
	p.Close()

	// A list names hosts; a name no peer has is shown missing; * is everyone.
	p2 := startPool(t, fast("gpu-a,nobody", nw))
	if got := strings.Join(func() []string {
		var out []string
		for _, h := range p2.Hosts() {
			out = append(out, h.Name+"="+h.State.String())
		}
		return out
	}(), " "); got != "gpu-a=ready nobody=missing" {
		t.Errorf("gpu-a,nobody: %s", got)
	}
	p2.Close()
	p3 := startPool(t, fast("*", nw))
	if n := len(p3.Hosts()); n != 4 {
		t.Errorf("*: %d hosts (%+v), want gpu-a, gpu-b, gpu-c and laptop", n, p3.Hosts())
	}
	p3.Close()
	nw.Close()
}

func TestNoHost(t *testing.T) {
	nw, _ := simNet(t, time.Millisecond, "gpu-a")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := pool.Dial(ctx, fast("tag:none", nw))
	if !errors.Is(err, pool.ErrNoHost) || !strings.Contains(err.Error(), "no peer matches") {
		t.Errorf("Dial(tag:none) = %v, want ErrNoHost saying no peer matches", err)
	}
	if _, err := pool.New(pool.Config{Target: "tag:gpu"}); err == nil {
		t.Error("New without a network succeeded")
	}
	if _, err := pool.New(pool.Config{Target: "tag:", Network: nw}); err == nil {
		t.Error("New with a bad target succeeded")
	}
}

func TestDeniedHostNeverPicked(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	nw, hosts := simNet(t, 2*time.Millisecond, "gpu-a", "gpu-b")
	sims := map[string]*pooltest.Sim{}
	for n, h := range hosts {
		sims[n] = h.Backend.(*pooltest.Sim)
	}
	deny, err := nw.StartHost("gpu-c", pooltest.NewSim(2*time.Millisecond, 1), denying(t, "relu"), "tag:gpu")
	if err != nil {
		t.Fatal(err)
	}
	p := startPool(t, fast("tag:gpu", nw))

	pl := p.Explain(t.Context(), "relu")
	if pl.Pick == "" || pl.Pick == "gpu-c" {
		t.Errorf("Explain(relu) picks %q: %+v", pl.Pick, pl)
	}
	for _, c := range pl.Candidates {
		if c.Host == "gpu-c" && (c.Allowed || !strings.Contains(c.Reason, "no-relu")) {
			t.Errorf("gpu-c in Explain: %+v, want denied by no-relu", c)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 60)
	for range 60 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := p.Compute(t.Context(), "relu", vec(16)); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := deny.Backend.(*pooltest.Sim).Calls(); n != 0 {
		t.Errorf("the host denying relu ran %d calls", n)
	}
	if a, b := sims["gpu-a"].Calls(), sims["gpu-b"].Calls(); a+b != 60 || a == 0 || b == 0 {
		t.Errorf("gpu-a ran %d, gpu-b %d; want 60 between them, some on each", a, b)
	}
	// gpu-c still takes what it allows.
	if pl := p.Explain(t.Context(), "saxpy"); !allowed(pl, "gpu-c") {
		t.Errorf("Explain(saxpy): %+v, want gpu-c allowed", pl)
	}
	p.Close()
	nw.Close()
}

func allowed(pl pool.Placement, host string) bool {
	for _, c := range pl.Candidates {
		if c.Host == host {
			return c.Allowed
		}
	}
	return false
}

func TestPermissionDeniedForgetsThePolicyAnswer(t *testing.T) {
	nw, hosts := simNet(t, time.Millisecond, "gpu-a", "gpu-b")
	cfg := fast("tag:gpu", nw)
	cfg.ExplainTTL = time.Hour // only a refusal can make the pool ask again
	p := startPool(t, cfg)
	for range 4 {
		if _, err := p.Compute(t.Context(), "relu", vec(4)); err != nil {
			t.Fatal(err)
		}
	}
	// gpu-a's policy changes under the pool's cached "allow": calls
	// placed there are refused, did not run, and run on gpu-b instead.
	hosts["gpu-a"].SetPolicy(denying(t, "relu"))
	a := hosts["gpu-a"].Backend.(*pooltest.Sim)
	before, placedBefore := a.Calls(), placed(p, "gpu-a")
	for placed(p, "gpu-a") == placedBefore {
		// Concurrent calls spread over both hosts, so one lands on gpu-a.
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, host, err := p.ComputeRequest(t.Context(), reluReq()); err != nil || host != "gpu-b" {
					t.Errorf("a call after the policy change: on %q, %v; want gpu-b", host, err)
				}
			}()
		}
		wg.Wait()
		if t.Failed() {
			return
		}
	}
	if a.Calls() != before {
		t.Errorf("gpu-a ran %d calls after it denied relu", a.Calls()-before)
	}
	if allowed(p.Explain(t.Context(), "relu"), "gpu-a") {
		t.Error("the pool still thinks gpu-a allows relu")
	}
}

func placed(p *pool.Pool, host string) uint64 {
	for _, h := range p.Hosts() {
		if h.Name == host {
			return h.Placed
		}
	}
	return 0
}
