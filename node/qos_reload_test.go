package node_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/policy"
	"github.com/gpumesh/gpumesh/qos/tc"
)

// classPolicy is a policy with the classes given (name, dscp, priority)
// whose rule for the laptop names class laptopClass.
func classPolicy(laptopClass string, classes ...string) string {
	var b strings.Builder
	b.WriteString("version = 1\n")
	for i := 0; i+2 < len(classes)+1; i += 3 {
		fmt.Fprintf(&b, "class %q {\n  dscp = %q\n  priority = %s\n}\n", classes[i], classes[i+1], classes[i+2])
	}
	fmt.Fprintf(&b, "rule \"laptop\" {\n  subjects = [\"laptop\"]\n  kernels = [\"*\"]\n  gpus = [\"*\"]\n  class = %q\n}\n", laptopClass)
	return b.String()
}

// reloadHost is a GPU host on the embedded tailnet whose policy a test
// rewrites and reloads, and a laptop connected to it.
type reloadHost struct {
	path   string
	store  *policy.Store
	host   *node.Host
	client *gpusvc.Client
}

func startReloadHost(t *testing.T, ctx context.Context, src string, qcfg *node.QoSConfig) *reloadHost {
	t.Helper()
	_, nodes := overlaytest.StartNodes(t, "gpu-host", "laptop")
	r := &reloadHost{path: filepath.Join(t.TempDir(), "policy.hcl")}
	r.write(t, src)
	var err error
	if r.store, err = policy.NewStore(r.path, t.Logf); err != nil {
		t.Fatal(err)
	}
	r.host, err = node.StartHost(ctx, node.HostConfig{Overlay: nodes[0], Name: "gpu-host", Policy: r.store, QoS: qcfg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.host.Close() })
	if r.client, err = node.Dial(nodes[1], "gpu-host"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.client.Close() })
	return r
}

func (r *reloadHost) write(t *testing.T, src string) {
	t.Helper()
	tmp := r.path + ".tmp"
	if err := os.WriteFile(tmp, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, r.path); err != nil {
		t.Fatal(err)
	}
}

func (r *reloadHost) call(ctx context.Context) error {
	x := kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32([]int64{256}, make([]float32, 256))}
	_, err := r.client.Compute(ctx, "saxpy", kernel.Arg{Kind: kernel.ArgScalar, Scalar: 2}, x, x)
	return err
}

// bytesByClass is the scheduler's admitted bytes per class now.
func (r *reloadHost) bytesByClass() map[string]int64 {
	m := map[string]int64{}
	for _, c := range r.host.QoSStatus().Classes {
		m[c.Name] = c.Bytes
	}
	return m
}

// callCountedIn makes one call and checks that its replies were counted in
// class only.
func (r *reloadHost) callCountedIn(t *testing.T, ctx context.Context, class string) {
	t.Helper()
	before := r.bytesByClass()
	if err := r.call(ctx); err != nil {
		t.Fatalf("call for class %s: %v", class, err)
	}
	after := r.bytesByClass()
	if after[class] <= before[class] {
		t.Errorf("class %s admitted no bytes for the call: %v -> %v", class, before, after)
	}
	for name, n := range after {
		if name != class && n != before[name] {
			t.Errorf("class %s admitted %d bytes of the call; they belong to %s", name, n-before[name], class)
		}
	}
}

// TestQoSFollowsPolicyReload: a reload that adds a class and moves the
// laptop's rule to it, and one that renames that class, each move the
// laptop's open connection: its calls, made all along, keep working, and
// the replies of the next call are scheduled and counted in the new class,
// nowhere else.
func TestQoSFollowsPolicyReload(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r := startReloadHost(t, ctx, classPolicy("gpu", "gpu", "AF41", "1"), &node.QoSConfig{})
	r.callCountedIn(t, ctx, "gpu")

	// Calls keep flowing while the policy changes under them.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var loopErr error
	calls := make(chan struct{}, 1)
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := r.call(ctx); err != nil {
				loopErr = err
				return
			}
			select {
			case calls <- struct{}{}:
			default:
			}
		}
	})
	steps := []struct {
		name, class, src string
	}{
		{"add a class", "interactive", classPolicy("interactive", "gpu", "AF41", "1", "interactive", "EF", "0")},
		{"rename it", "fast", classPolicy("fast", "gpu", "AF41", "1", "fast", "EF", "0")},
	}
	for _, s := range steps {
		<-calls
		r.write(t, s.src)
		if err := r.store.Reload(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		<-calls // a call after the reload
	}
	close(stop)
	wg.Wait()
	if loopErr != nil {
		t.Fatalf("a call failed while the policy changed: %v", loopErr)
	}
	r.callCountedIn(t, ctx, "fast")
	var names []string
	for _, c := range r.host.QoSStatus().Classes {
		names = append(names, c.Name)
	}
	if !slices.Equal(names, []string{"fast", "gpu", "default"}) {
		t.Errorf("scheduled classes %v, want [fast gpu default]", names)
	}

	// Back to the first class, on the same connection.
	r.write(t, classPolicy("gpu", "gpu", "AF41", "1", "fast", "EF", "0"))
	if err := r.store.Reload(); err != nil {
		t.Fatal(err)
	}
	r.callCountedIn(t, ctx, "gpu")
}

// TestQoSReloadRefused: with host shaping on, a reload whose classes the
// kernel will not take (the tc class id the new class needs is taken) is
// refused as a whole (on a veth nothing else uses): the error names the QoS part, the old policy stays
// in force and serves, its classes keep counting, and the tc tree is as it
// was. Once the id is free the same reload goes through, and the peer
// route of the laptop follows it.
func TestQoSReloadRefused(t *testing.T) {
	if !tc.HasPrivilege() {
		t.Skip("needs CAP_NET_ADMIN: host shaping on a veth")
	}
	link := fmt.Sprintf("gmq%d", os.Getpid()%100000)
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	ip("link", "add", link, "type", "veth", "peer", "name", link+"p")
	t.Cleanup(func() { exec.Command("ip", "link", "del", link).Run() })
	ip("link", "set", link, "up")

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r := startReloadHost(t, ctx, classPolicy("gpu", "gpu", "AF41", "1"),
		&node.QoSConfig{ShapeLink: link, ShapeRate: 125_000_000})
	r.callCountedIn(t, ctx, "gpu")
	first := r.store.Current()
	tree := r.host.QoSStatus().Shaping
	if tree == "" {
		t.Fatal("no tc tree installed")
	}
	// The new class would get the next free id after gpu's 9d:10.
	if out, err := exec.Command("tc", "class", "add", "dev", link, "parent", "9d:1", "classid", "9d:11", "htb", "rate", "1mbit").CombinedOutput(); err != nil {
		t.Fatalf("tc class add: %v %s", err, out)
	}
	next := classPolicy("interactive", "gpu", "AF41", "1", "interactive", "EF", "0")
	r.write(t, next)
	err := r.store.Reload()
	var re *policy.RefusedError
	if !errors.As(err, &re) || re.Applier != "qos" || !strings.Contains(err.Error(), "9d:11") {
		t.Fatalf("Reload = %v, want the qos applier's refusal naming 9d:11", err)
	}
	if r.store.Current() != first {
		t.Fatal("the refused policy was put in force")
	}
	r.callCountedIn(t, ctx, "gpu") // the old policy serves, its classes count
	if got := r.host.QoSStatus().Shaping; got != tree {
		t.Errorf("the tc tree changed under a refused reload:\n%s\nwant\n%s", got, tree)
	}

	if out, err := exec.Command("tc", "class", "del", "dev", link, "classid", "9d:11").CombinedOutput(); err != nil {
		t.Fatalf("tc class del: %v %s", err, out)
	}
	if err := r.store.Reload(); err != nil {
		t.Fatal(err)
	}
	r.callCountedIn(t, ctx, "interactive")
	if got := r.host.QoSStatus().Shaping; !strings.Contains(got, "interactive") {
		t.Errorf("the tc tree lacks the new class:\n%s", got)
	}
	// The laptop's peer route, if the path is direct, follows at once.
	deadline := time.Now().Add(10 * time.Second)
	for {
		routes := r.host.QoSStatus().Routes
		if len(routes) > 0 && routes[0].Class == "interactive" {
			break
		}
		if time.Now().After(deadline) {
			t.Logf("no direct-path route to check (routes %v): the laptop may be relayed", routes)
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
