package kube_test

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/kube"
	"github.com/gpumesh/gpumesh/kube/kubetest"
	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
)

// waitHosts waits until hosts' snapshot satisfies ok, and returns it.
func waitHosts(ctx context.Context, t *testing.T, hosts kube.Hosts, what string, ok func([]kube.Host) bool) []kube.Host {
	t.Helper()
	for {
		hs, changed := hosts.Snapshot()
		if ok(hs) {
			return hs
		}
		select {
		case <-changed:
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v; hosts now %+v", what, ctx.Err(), hs)
		}
	}
}

// unixClient is a compute client through a tunnel's socket, as a pod
// would dial it.
func unixClient(t testing.TB, socket string) *gpusvc.Client {
	t.Helper()
	c, err := gpusvc.NewClient("gpu-host:50051", func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// matmul checks a small matrix product through c.
func matmul(ctx context.Context, c *gpusvc.Client) error {
	a := kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32([]int64{2, 3}, []float32{1, 2, 3, 4, 5, 6})}
	b := kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32([]int64{3, 2}, []float32{7, 8, 9, 10, 11, 12})}
	out, err := c.Compute(ctx, "matrix_mul", a, b)
	if err != nil {
		return err
	}
	got := out.Float32s()
	want := []float32{58, 64, 139, 154}
	for i := range want {
		if i >= len(got) || got[i] != want[i] {
			return errors.New("matrix_mul: wrong product")
		}
	}
	return nil
}

// TestStaticHostsAndTunnels probes a GPU host and a name that answers
// nothing, serves a tunnel to the host's GPU, restores it in a second
// agent, removes it, and sees the host go unhealthy when it leaves.
func TestStaticHostsAndTunnels(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	m := kubetest.StartMesh(t, "k8s-node-1", "")
	host := m.AddHost(t, "gpu-host", "tag:gpu")

	hosts, err := kube.StartStatic(ctx, kube.StaticConfig{
		Names:    []string{"nowhere", "gpu-host"},
		Overlay:  m.Agent,
		Interval: 100 * time.Millisecond,
		Timeout:  2 * time.Second,
		Logger:   nil,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer hosts.Close()
	hs := waitHosts(ctx, t, hosts, "gpu-host healthy", func(hs []kube.Host) bool {
		h, ok := kube.Find(hs, "gpu-host")
		return ok && h.Healthy
	})
	if len(hs) != 2 || hs[0].Name != "gpu-host" || hs[1].Name != "nowhere" {
		t.Fatalf("hosts %+v; want gpu-host and nowhere, sorted", hs)
	}
	gh := hs[0]
	if gh.Backend != "cpu" || len(gh.Devices) != 1 || gh.Devices[0].Index != 0 || !strings.HasPrefix(gh.Devices[0].Model, "CPU") {
		t.Errorf("gpu-host = %+v; want the CPU backend's one device", gh)
	}
	if len(gh.Tags) != 1 || gh.Tags[0] != "tag:gpu" {
		t.Errorf("gpu-host tags %v; want [tag:gpu] from the overlay", gh.Tags)
	}
	if hs[1].Healthy || hs[1].Problem == "" {
		t.Errorf("nowhere = %+v; want unhealthy with a problem", hs[1])
	}
	if _, err := hosts.Dial(ctx, "elsewhere"); err == nil || !strings.Contains(err.Error(), "not one of the GPU hosts") {
		t.Errorf("Dial(elsewhere) = %v; want a refusal", err)
	}

	dir := filepath.Join(t.TempDir(), "t")
	ts, err := kube.OpenTunnels(kube.TunnelConfig{Dir: dir, Dial: hosts.Dial})
	if err != nil {
		t.Fatal(err)
	}
	spec := kube.TunnelSpec{ID: kube.TunnelID("c-", "claim-uid", "gpu-host", "gpu-0"), Owner: "claim-uid", Host: "gpu-host", GPU: 0}
	tun, err := ts.Open(spec)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := ts.Open(spec); err != nil || again != tun {
		t.Errorf("opening the same spec again = %v, %v; want the same tunnel", again, err)
	}
	wantTarget := "unix:///var/run/gpumesh/" + spec.ID + "/gpumesh.sock"
	if tun.Target() != wantTarget {
		t.Errorf("Target() = %q; want %q", tun.Target(), wantTarget)
	}
	env := kube.ContainerEnv([]*kube.Tunnel{tun})
	if env["GPUMESH_TARGET"] != wantTarget || env["GPUMESH_TARGET_0"] != wantTarget || env["GPUMESH_GPU"] != "0" || env["GPUMESH_HOST"] != "gpu-host" {
		t.Errorf("ContainerEnv = %v", env)
	}
	c := unixClient(t, tun.Socket())
	if err := matmul(ctx, c); err != nil {
		t.Fatal(err)
	}
	dev, err := c.Devices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if dev.GetCaller() != "k8s-node-1" {
		t.Errorf("the host sees the tunnel's caller as %q; want the agent's node k8s-node-1", dev.GetCaller())
	}

	// A restarted agent serves the tunnels it finds.
	if err := ts.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ts.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close = %v; want net.ErrClosed", err)
	}
	ts2, err := kube.OpenTunnels(kube.TunnelConfig{Dir: dir, Dial: hosts.Dial})
	if err != nil {
		t.Fatal(err)
	}
	defer ts2.Close()
	if got := ts2.List(); len(got) != 1 || got[0] != spec {
		t.Fatalf("restored tunnels %+v; want [%+v]", got, spec)
	}
	if err := matmul(ctx, unixClient(t, tun.Socket())); err != nil {
		t.Fatalf("through the restored tunnel: %v", err)
	}
	if err := ts2.RemoveOwner(ctx, "claim-uid"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tun.HostDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("tunnel directory left after Remove: %v", err)
	}
	if err := ts2.Remove(ctx, spec.ID); err != nil {
		t.Errorf("removing a removed tunnel = %v; want nil", err)
	}

	// The host leaves: it turns unhealthy and keeps its devices.
	host.Leave()
	hs = waitHosts(ctx, t, hosts, "gpu-host unhealthy", func(hs []kube.Host) bool {
		h, ok := kube.Find(hs, "gpu-host")
		return ok && !h.Healthy
	})
	if h, _ := kube.Find(hs, "gpu-host"); len(h.Devices) != 1 || h.Problem == "" {
		t.Errorf("gpu-host after leaving = %+v; want its device kept and a problem", h)
	}
	if err := hosts.Close(); err != nil {
		t.Fatal(err)
	}
	if err := hosts.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close = %v; want net.ErrClosed", err)
	}
}

func TestTunnelRefusals(t *testing.T) {
	refuse := func(context.Context, string) (net.Conn, error) { return nil, errors.New("no hosts here") }
	if _, err := kube.OpenTunnels(kube.TunnelConfig{Dir: "/" + strings.Repeat("d", 100), Dial: refuse}); err == nil || !strings.Contains(err.Error(), "too long") {
		t.Errorf("a 100-byte directory = %v; want too long for Unix sockets", err)
	}
	ts, err := kube.OpenTunnels(kube.TunnelConfig{Dir: t.TempDir(), Dial: refuse})
	if err != nil {
		t.Fatal(err)
	}
	defer ts.Close()
	for _, spec := range []kube.TunnelSpec{
		{ID: "../escape", Host: "gpu-host"},
		{ID: "UPPER", Host: "gpu-host"},
		{ID: "", Host: "gpu-host"},
		{ID: strings.Repeat("a", 65), Host: "gpu-host"},
		{ID: "ok", Host: ""},
		{ID: "ok", Host: "gpu-host", GPU: -1},
	} {
		if _, err := ts.Open(spec); err == nil {
			t.Errorf("Open(%+v) succeeded", spec)
		}
	}
	if err := ts.Remove(t.Context(), "../escape"); err == nil {
		t.Error("Remove(../escape) succeeded")
	}
}

// peerList is the agent's tailnet node with a peer list that can hide
// peers: the embedded tailnet's control keeps a node that closed listed
// as online, as a real one does for a while.
type peerList struct {
	*tsnet.Node
	mu     sync.Mutex
	hidden map[string]bool // guarded by mu
}

func (p *peerList) hide(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hidden[name] = true
}

func (p *peerList) Peers(ctx context.Context) ([]overlay.Peer, error) {
	peers, err := p.Node.Peers(ctx)
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.DeleteFunc(peers, func(pe overlay.Peer) bool { return p.hidden[pe.Name] }), err
}

// TestDiscoveredHosts finds the GPU hosts by tag in the peer list, as a
// pool does: a host of the tag is probed, a peer without it is not, a host
// that joins later is found, and one that leaves is unhealthy, and
// forgotten once it is out of the peer list.
func TestDiscoveredHosts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	m := kubetest.StartMesh(t, "k8s-node-1", "")
	m.AddHost(t, "gpu-a", "tag:gpu")
	m.AddHost(t, "cpu-b", "tag:build")
	if _, err := kube.StartStatic(ctx, kube.StaticConfig{Target: "tag:gpu,", Overlay: m.Agent}); err == nil {
		t.Error("a malformed target was accepted")
	}
	pl := &peerList{Node: m.Agent, hidden: make(map[string]bool)}
	hosts, err := kube.StartStatic(ctx, kube.StaticConfig{
		Target:      "tag:gpu",
		Overlay:     pl,
		Interval:    100 * time.Millisecond,
		Timeout:     2 * time.Second,
		ForgetAfter: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer hosts.Close()
	hs := waitHosts(ctx, t, hosts, "gpu-a healthy", func(hs []kube.Host) bool {
		h, ok := kube.Find(hs, "gpu-a")
		return ok && h.Healthy
	})
	if len(hs) != 1 || len(hs[0].Devices) != 1 {
		t.Fatalf("hosts %+v; want gpu-a alone (cpu-b is not tagged tag:gpu) with its device", hs)
	}
	if _, err := hosts.Dial(ctx, "cpu-b"); err == nil {
		t.Error("Dial(cpu-b) succeeded; want a refusal: it is not a GPU host of the target")
	}

	gpuC := m.AddHost(t, "gpu-c", "tag:gpu")
	waitHosts(ctx, t, hosts, "gpu-c found and healthy", func(hs []kube.Host) bool {
		h, ok := kube.Find(hs, "gpu-c")
		return ok && h.Healthy && len(hs) == 2
	})
	conn, err := hosts.Dial(ctx, "gpu-c")
	if err != nil {
		t.Fatalf("Dial(gpu-c): %v", err)
	}
	conn.Close()

	gpuC.Leave()
	waitHosts(ctx, t, hosts, "gpu-c unhealthy", func(hs []kube.Host) bool {
		h, ok := kube.Find(hs, "gpu-c")
		return ok && !h.Healthy
	})
	pl.hide("gpu-c")
	waitHosts(ctx, t, hosts, "gpu-c forgotten", func(hs []kube.Host) bool {
		_, ok := kube.Find(hs, "gpu-c")
		return !ok && len(hs) == 1
	})
	if _, err := hosts.Dial(ctx, "gpu-c"); err == nil {
		t.Error("Dial(gpu-c) succeeded after it was forgotten")
	}
}
