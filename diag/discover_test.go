package diag_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/gpumesh/gpumesh/diag"
	"github.com/gpumesh/gpumesh/gpusvc"
)

// TestFind: nodes are found through their links in a runtime dir and in
// the default state dirs, each once; none found says where it looked;
// two found asks which; a link a stopped node left is skipped, and a live
// node's name is not taken over. No tailnet: finding only connects to the
// local API's socket.
func TestFind(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent()) // every local API's server ended with its Close
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	base := t.TempDir()
	rt := filepath.Join(base, "run", "gpumesh")
	root := filepath.Join(base, "config", "gpumesh")
	search := diag.Search{RuntimeDirs: []string{rt}, StateRoots: []string{root}}

	_, err := diag.FindOne(ctx, search)
	var nf *diag.NotFoundError
	if !errors.As(err, &nf) || !errors.Is(err, diag.ErrNotRunning) {
		t.Fatalf("FindOne with nothing running = %v; want a NotFoundError", err)
	}
	for _, place := range []string{filepath.Join(rt, "*.sock"), filepath.Join(root, "*", "gpumesh.sock")} {
		if !strings.Contains(err.Error(), place) || !strings.HasPrefix(err.Error(), "no running gpumesh node (looked in ") {
			t.Errorf("%q does not say it looked in %s", err, place)
		}
	}

	// gpu-host: its state dir elsewhere (like /var/lib/gpumesh), linked.
	hostState := filepath.Join(base, "var", "gpu-host")
	host := serveLocal(t, hostState)
	if err := host.Register(rt, "gpu-host"); err != nil {
		t.Fatal(err)
	}
	got, err := diag.FindOne(ctx, search)
	if err != nil || got.Name != "gpu-host" || got.StateDir() != hostState {
		t.Fatalf("FindOne = %+v, %v; want gpu-host on %s", got, err, hostState)
	}

	// cloud: in a default state dir, and linked too: still one node.
	cloudState := filepath.Join(root, "cloud")
	cloud := serveLocal(t, cloudState)
	if err := cloud.Register(rt, "cloud"); err != nil {
		t.Fatal(err)
	}
	all, err := diag.Find(ctx, search)
	if err != nil || len(all) != 2 || all[0].Name != "cloud" || all[1].Name != "gpu-host" {
		t.Fatalf("Find = %+v, %v; want cloud and gpu-host once each", all, err)
	}
	_, err = diag.FindOne(ctx, search)
	var several *diag.SeveralError
	if !errors.As(err, &several) || !strings.Contains(err.Error(), "--state-dir") ||
		!strings.Contains(err.Error(), "gpu-host (state dir "+hostState+")") || !strings.Contains(err.Error(), "cloud (state dir "+cloudState+")") {
		t.Fatalf("FindOne with two running = %v; want both named and --state-dir asked for", err)
	}

	// Another live node may not take gpu-host's name.
	other := serveLocal(t, filepath.Join(base, "var", "other"))
	if err := other.Register(rt, "gpu-host"); err == nil || !strings.Contains(err.Error(), "another gpumesh node named gpu-host") {
		t.Errorf("Register over a live node's link = %v", err)
	}
	if err := other.Register(rt, "../escape"); err == nil {
		t.Error("Register took a name with a slash")
	}
	other.Close()

	// Closing removes the link; a link left by a node that died is skipped.
	if err := cloud.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(rt, "cloud.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cloud's link after Close: %v", err)
	}
	if err := os.Symlink(filepath.Join(base, "gone", "gpumesh.sock"), filepath.Join(rt, "gone.sock")); err != nil {
		t.Fatal(err)
	}
	if got, err := diag.FindOne(ctx, search); err != nil || got.Name != "gpu-host" {
		t.Fatalf("FindOne after cloud stopped = %+v, %v; want gpu-host", got, err)
	}
	// The found socket answers the local API.
	if _, err := (diag.LocalClient{Path: got.Socket}).QoS(ctx); !errors.Is(err, diag.ErrNoQoS) {
		t.Errorf("asking the found node: %v", err)
	}
	if err := host.Close(); err != nil {
		t.Fatal(err)
	}
	if err := host.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close = %v; want net.ErrClosed", err)
	}
	if _, err := diag.FindOne(ctx, search); !errors.Is(err, diag.ErrNotRunning) {
		t.Errorf("FindOne after every node stopped = %v", err)
	}
}

// serveLocal serves a local API for no tailnet node in a new state dir.
func serveLocal(t *testing.T, dir string) *diag.LocalAPI {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	api, err := diag.ServeLocal(diag.SocketPath(dir), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { api.Close() })
	return api
}

// TestStatusListsSelf: a GPU host's report lists the host itself among the
// GPU hosts, with its devices.
func TestStatusListsSelf(t *testing.T) {
	rep := diag.Report{Self: diag.Self{Name: "gpu-host", Addrs: []string{"100.64.0.1"}, State: "Running",
		GPU: diag.SelfGPUHost("gpu-host", 50051, gpusvc.Info{Backend: "cpu", Devices: []gpusvc.Device{{Index: 0, Name: "cpu"}}})}}
	var b bytes.Buffer
	if err := diag.WriteStatus(&b, rep); err != nil {
		t.Fatal(err)
	}
	want := "this node: gpu-host 100.64.0.1, running\nGPU hosts:\n  gpu-host  100.64.0.1  this node  cpu backend, 1 device\n  gpu-host gpu 0: cpu, 0B in buffers\n"
	if b.String() != want {
		t.Errorf("status:\n%s\nwant:\n%s", b.String(), want)
	}
}
