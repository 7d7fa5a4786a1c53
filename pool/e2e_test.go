package pool_test

import (
	"context"
	"errors"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
	"github.com/gpumesh/gpumesh/policy"
	"github.com/gpumesh/gpumesh/pool"
)

const allowLaptop = `
version = 1
rule "laptop" {
  subjects = ["laptop"]
  kernels  = ["*"]
  gpus     = ["*"]
}
`

const denyLaptopMatmul = `
version = 1
rule "laptop" {
  subjects = ["laptop"]
  kernels  = ["*"]
  gpus     = ["*"]
}
deny "no-matmul-for-laptop" {
  subjects = ["laptop"]
  kernels  = ["matrix_mul"]
}
`

// tailnetHost is a GPU host on the embedded tailnet: its node, its
// endpoint (CPU backend) and a count of the matrix_mul calls that reached
// it, allowed or not.
type tailnetHost struct {
	node       *tsnet.Node
	host       *node.Host
	policyPath string // the file its policy store loads
	matmuls    atomic.Int64
}

// startTailnet starts an embedded tailnet with the GPU hosts policies
// names (each carrying tag:gpu, serving with the CPU backend under its
// policy) and a laptop, and returns the laptop's node and the hosts. Each
// is closed when the test ends.
func startTailnet(ctx context.Context, t *testing.T, policies map[string]string) (*tsnet.Node, map[string]*tailnetHost) {
	t.Helper()
	tn, err := overlaytest.Start(overlaytest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tn.Close() })

	// Join the nodes at once: each join waits on the control server.
	names := append(slices.Sorted(maps.Keys(policies)), "laptop")
	nodes := make([]*tsnet.Node, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var tags []string
			if name != "laptop" {
				tags = []string{"tag:gpu"}
			}
			nodes[i], errs[i] = tn.Join(ctx, name, tags...)
		}()
	}
	wg.Wait()
	for i, n := range nodes {
		if n != nil {
			t.Cleanup(func() { n.Close() })
		}
		if errs[i] != nil {
			t.Fatalf("join %s: %v", names[i], errs[i])
		}
	}
	hosts := map[string]*tailnetHost{}
	for i, name := range names[:len(names)-1] {
		path := filepath.Join(t.TempDir(), "policy.hcl")
		if err := os.WriteFile(path, []byte(policies[name]), 0o600); err != nil {
			t.Fatal(err)
		}
		store, err := policy.NewStore(path, t.Logf)
		if err != nil {
			t.Fatal(err)
		}
		th := &tailnetHost{node: nodes[i], policyPath: path}
		cfg := node.HostConfig{Overlay: nodes[i], Name: name, Policy: store, Backend: node.BackendConfig{Ready: cpu.New()}}
		cfg.AddOnCall(func(r gpusvc.CallRecord) {
			if r.Method == "Compute" && r.Kernel == "matrix_mul" {
				th.matmuls.Add(1)
			}
		})
		if th.host, err = node.StartHost(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { th.host.Close() })
		hosts[name] = th
	}
	return nodes[len(nodes)-1], hosts
}

// TestTailnetPool runs a pool over the real tailnet with real hosts (CPU
// backend): gpu-a, gpu-b and gpu-c carry tag:gpu, gpu-c's policy denies
// the laptop matrix_mul, and gpu-b leaves the tailnet while the laptop's
// callers run. gpu-c never sees a matrix_mul call; every stateless call
// succeeds with the right result; gpu-b's session fails naming it.
func TestTailnetPool(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	laptop, hosts := startTailnet(ctx, t, map[string]string{"gpu-a": allowLaptop, "gpu-b": allowLaptop, "gpu-c": denyLaptopMatmul})

	p, err := pool.Dial(ctx, pool.Config{
		Target: "tag:gpu", Network: laptop,
		RefreshInterval: 250 * time.Millisecond, ProbeTimeout: 3 * time.Second,
		DownAfter: 4 * time.Second, RetryInterval: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	waitHosts(t, p, "three ready hosts", func(hs map[string]pool.HostInfo) bool {
		return len(hs) == 3 && hs["gpu-a"].State == pool.StateReady && hs["gpu-b"].State == pool.StateReady && hs["gpu-c"].State == pool.StateReady
	})
	if hi := p.Hosts()[0]; hi.Backend != "cpu" || len(hi.Tags) != 1 || hi.Tags[0] != "tag:gpu" {
		t.Errorf("gpu-a as the pool sees it: %+v", hi)
	}
	pl := p.Explain(ctx, "matrix_mul")
	if pl.Pick != "gpu-a" && pl.Pick != "gpu-b" {
		t.Errorf("Explain(matrix_mul) picks %q: %s", pl.Pick, pl.Why)
	}
	if allowed(pl, "gpu-c") {
		t.Error("Explain says gpu-c allows the laptop matrix_mul")
	}

	// A session on gpu-b, holding a buffer, to be lost with it.
	var onB *pool.Session
	var sessions []*pool.Session
	for onB == nil && len(sessions) < 6 {
		s, err := p.OpenSession(ctx, "matrix_mul")
		if err != nil {
			t.Fatal(err)
		}
		sessions = append(sessions, s)
		if s.Host() == "gpu-c" {
			t.Fatalf("a session for matrix_mul opened on gpu-c, which denies it")
		}
		if s.Host() == "gpu-b" {
			onB = s
		}
	}
	if onB == nil {
		t.Fatal("no session for matrix_mul opened on gpu-b in 6 tries")
	}
	a, b := matrix(8, 1), matrix(8, 2)
	bufA, err := onB.Upload(ctx, a.Tensor.Data)
	if err != nil {
		t.Fatal(err)
	}
	got, err := onB.Compute(ctx, "matrix_mul", pool.BufferArg(bufA, 8, 8), b)
	if err != nil || !sameMatmul(got, a, b) {
		t.Fatalf("matrix_mul in the session on gpu-b: %v", err)
	}

	// Eight callers run matrix_mul; gpu-b leaves a few calls in.
	var (
		calls   atomic.Int64
		byHost  sync.Map
		callErr = make(chan error, 1000)
		stop    = make(chan struct{})
		tick    = make(chan struct{}, 1)
		cw      sync.WaitGroup
	)
	for i := range 8 {
		cw.Add(1)
		go func() {
			defer cw.Done()
			x, y := matrix(16, float32(i)), matrix(16, 3)
			for {
				select {
				case <-stop:
					return
				default:
				}
				res, host, err := p.ComputeRequest(ctx, &pb.ComputeRequest{Kernel: "matrix_mul", Args: gpusvc.ArgsToPB([]kernel.Arg{x, y})})
				switch {
				case err != nil:
					callErr <- err
				case !sameMatmul(gpusvc.TensorFromPB(res.GetOutputs()[0]), x, y):
					callErr <- errors.New("wrong result from " + host)
				default:
					n, _ := byHost.LoadOrStore(host, new(atomic.Int64))
					n.(*atomic.Int64).Add(1)
				}
				calls.Add(1)
				select {
				case tick <- struct{}{}:
				default:
				}
			}
		}()
	}
	waitCalls := func(n int64) {
		want := calls.Load() + n
		for calls.Load() < want {
			select {
			case <-tick:
			case <-ctx.Done():
				t.Fatalf("only %d calls done", calls.Load())
			}
		}
	}
	waitCalls(40)
	b1 := hosts["gpu-b"]
	if err := b1.node.Logout(ctx); err != nil {
		t.Logf("gpu-b logout: %v", err)
	}
	waitHosts(t, p, "gpu-b to be gone", func(hs map[string]pool.HostInfo) bool {
		h, ok := hs["gpu-b"]
		return !ok || h.State == pool.StateDown
	})
	waitCalls(40)
	close(stop)
	cw.Wait()
	close(callErr)
	for err := range callErr {
		t.Errorf("a stateless call failed: %v", err)
	}
	if n := hosts["gpu-c"].matmuls.Load(); n != 0 {
		t.Errorf("gpu-c, which denies the laptop matrix_mul, saw %d matrix_mul calls", n)
	}
	var split []string
	byHost.Range(func(k, v any) bool {
		split = append(split, k.(string)+"="+strconv.FormatInt(v.(*atomic.Int64).Load(), 10))
		return true
	})
	t.Logf("calls by host: %s", strings.Join(split, " "))
	if _, ok := byHost.Load("gpu-c"); ok {
		t.Error("a matrix_mul call ran on gpu-c")
	}
	if _, err := onB.Read(ctx, bufA, 0, 0); !errors.Is(err, pool.ErrHostLost) || !strings.Contains(err.Error(), "gpu-b") {
		t.Errorf("the session on gpu-b after it left: %v, want ErrHostLost naming gpu-b", err)
	}
	for _, s := range sessions {
		if s != onB {
			if err := s.Close(ctx); err != nil {
				t.Errorf("closing the session on %s: %v", s.Host(), err)
			}
		}
	}
}

func matrix(n int, seed float32) kernel.Arg {
	v := make([]float32, n*n)
	for i := range v {
		v[i] = float32(i%7)*0.25 + seed
	}
	return kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32([]int64{int64(n), int64(n)}, v)}
}

// sameMatmul reports whether got is a×b (square), computed here.
func sameMatmul(got kernel.Tensor, a, b kernel.Arg) bool {
	n := int(a.Tensor.Shape[0])
	x, y, g := a.Tensor.Float32s(), b.Tensor.Float32s(), got.Float32s()
	if len(g) != n*n {
		return false
	}
	for i := range n {
		for j := range n {
			var s float64
			for k := range n {
				s += float64(x[i*n+k]) * float64(y[k*n+j])
			}
			if math.Abs(s-float64(g[i*n+j])) > 1e-3*math.Max(1, math.Abs(s)) {
				return false
			}
		}
	}
	return true
}
