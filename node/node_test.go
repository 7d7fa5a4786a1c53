package node_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/policy"
)

const openPolicy = `
version = 1
rule "laptop" {
  subjects = ["laptop"]
  kernels  = ["*"]
  gpus     = ["*"]
}
`

const tightPolicy = `
version = 1
rule "laptop" {
  subjects = ["laptop"]
  kernels  = ["matrix_mul"]
  gpus     = ["*"]
}
`

const brokenPolicy = `
version = 1
rule "laptop" {
  subjects = ["laptop"]
  kernals  = ["matrix_mul"]
}
`

// TestReloadUnderLoad: while the laptop calls saxpy in a loop, an invalid
// policy is rejected and changes nothing, then a policy that no longer
// allows saxpy applies to the very next call; no call fails because of
// the reloads themselves.
func TestReloadUnderLoad(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, nodes := overlaytest.StartNodes(t, "gpu-host", "laptop")
	hostNode, laptopNode := nodes[0], nodes[1]

	path := filepath.Join(t.TempDir(), "policy.hcl")
	write := func(src string) {
		t.Helper()
		// Write to a temporary file and rename, as editors do.
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write(openPolicy)
	store, err := policy.NewStore(path, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	host, err := node.StartHost(ctx, node.HostConfig{Overlay: hostNode, Name: "gpu-host", Policy: store})
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	c, err := node.Dial(laptopNode, "gpu-host")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	x := kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32([]int64{4}, []float32{1, 2, 3, 4})}
	a := kernel.Arg{Kind: kernel.ArgScalar, Scalar: 2}
	saxpy := func() error {
		_, err := c.Compute(ctx, "saxpy", a, x, x)
		return err
	}

	var (
		ok, denied atomic.Int64
		mu         sync.Mutex
		other      []error
		stop       = make(chan struct{})
		wg         sync.WaitGroup
	)
	progress := make(chan struct{}, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			switch err := saxpy(); status.Code(err) {
			case codes.OK:
				ok.Add(1)
			case codes.PermissionDenied:
				denied.Add(1)
			default:
				mu.Lock()
				other = append(other, err)
				mu.Unlock()
			}
			select {
			case progress <- struct{}{}:
			default:
			}
		}
	}()
	waitCalls := func(n int) {
		t.Helper()
		for range n {
			select {
			case <-progress:
			case <-ctx.Done():
				t.Fatal("the calling loop stalled")
			}
		}
	}

	waitCalls(5)
	write(brokenPolicy)
	if err := host.ReloadPolicy(); err == nil {
		t.Fatal("an invalid policy was accepted")
	}
	if err := saxpy(); err != nil {
		t.Fatalf("after an invalid reload, the old policy must stay: %v", err)
	}
	waitCalls(5)
	if n := denied.Load(); n != 0 {
		t.Fatalf("%d calls denied while the open policy was in force", n)
	}

	write(tightPolicy)
	if err := host.ReloadPolicy(); err != nil {
		t.Fatalf("reload of a valid policy: %v", err)
	}
	if err := saxpy(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("the first call after the tightening reload: %v; want PermissionDenied", err)
	}
	waitCalls(3)
	close(stop)
	wg.Wait()
	if len(other) > 0 {
		t.Fatalf("calls failed for reasons other than the policy: %v", other)
	}
	if ok.Load() == 0 || denied.Load() == 0 {
		t.Fatalf("loop saw %d allowed and %d denied calls; want both", ok.Load(), denied.Load())
	}
	// matrix_mul is still allowed.
	m := kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32([]int64{1, 1}, []float32{3})}
	if _, err := c.Compute(ctx, "matrix_mul", m, m); err != nil {
		t.Fatalf("matrix_mul under the tightened policy: %v", err)
	}
}
