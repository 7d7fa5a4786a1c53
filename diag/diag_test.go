package diag_test

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"tailscale.com/tailcfg"

	"github.com/gpumesh/gpumesh/diag"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
	"github.com/gpumesh/gpumesh/policy"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

const hostPolicy = `
version = 1
class "interactive" {
  dscp     = "AF41"
  priority = 1
}
rule "laptop" {
  subjects = ["laptop"]
  kernels  = ["*"]
  gpus     = ["*"]
  class    = "interactive"
}
`

// normalisers make reports from different runs and machines comparable.
var normalisers = []struct {
	re   *regexp.Regexp
	with string
}{
	// A direct path's endpoint is whichever of the machine's addresses
	// the two nodes settled on.
	{regexp.MustCompile(`direct \([0-9a-f.:\[\]]+\)`), "direct (ENDPOINT)"},
	{regexp.MustCompile(`"via": "[0-9a-f.:\[\]]+"`), `"via": "ENDPOINT"`},
	{regexp.MustCompile(`127\.0\.0\.1:\d+`), "127.0.0.1:PORT"},
	{regexp.MustCompile(`100\.\d+\.\d+\.\d+`), "100.X.X.X"},
	{regexp.MustCompile(`fd7a:115c:a1e0:[0-9a-f:]+`), "fd7a:115c:a1e0::X"},
	{regexp.MustCompile(`\d+(\.\d+)?ms\b`), "<lat>"},
	// At most three decimals (microseconds): float noise such as
	// 0.17466500000000001 is left in place and fails the comparison.
	{regexp.MustCompile(`"latency_ms": \d+(\.\d{1,3})?([,\n])`), `"latency_ms": <lat>$2`},
	{regexp.MustCompile(`CPU \(\d+ cores, [^)]*\)`), "CPU (<cores>)"},
	{regexp.MustCompile(`"os": "[a-z]+"`), `"os": "<os>"`},
}

// columnGap is the space between the columns of a text report: its width
// follows the widest latency, which varies from run to run.
var columnGap = regexp.MustCompile(`(\S)  +`)

func normalise(b []byte) []byte {
	for _, n := range normalisers {
		b = n.re.ReplaceAll(b, []byte(n.with))
	}
	return columnGap.ReplaceAll(b, []byte("$1  "))
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	got = normalise(got)
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./diag -update to write it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

// waitDirect pings from a to b until the path between them is direct, so
// that reports do not depend on how fast the path was upgraded.
func waitDirect(t *testing.T, ctx context.Context, a, b *tsnet.Node) {
	t.Helper()
	for i := 0; i < 50; i++ {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		pr, err := a.LocalClient().Ping(pctx, b.Addrs()[0], tailcfg.PingDisco)
		cancel()
		if err == nil && pr.Endpoint != "" {
			return
		}
	}
	t.Fatalf("%s never reached %s directly", a.Hostname(), b.Hostname())
}

type world struct {
	tn    *overlaytest.Tailnet
	nodes map[string]*tsnet.Node
	host  *node.Host
}

func startWorld(t *testing.T, ctx context.Context) *world {
	tn, err := overlaytest.Start(overlaytest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tn.Close() })
	// Real control servers say which peers are online; the test control
	// server does when asked to.
	tn.Control.AllOnline = true
	w := &world{tn: tn, nodes: map[string]*tsnet.Node{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	names := []string{"gpu-host", "laptop", "stranger", "gpu-spare"}
	errs := make(chan error, len(names))
	for _, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := tn.Join(ctx, name)
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			w.nodes[name] = n
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	for _, n := range w.nodes {
		t.Cleanup(func() { n.Close() })
	}
	for err := range errs {
		t.Fatal(err)
	}
	pol := filepath.Join(t.TempDir(), "policy.hcl")
	if err := os.WriteFile(pol, []byte(hostPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	store, err := policy.NewStore(pol, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	w.host, err = node.StartHost(ctx, node.HostConfig{Overlay: w.nodes["gpu-host"], Name: "gpu-host", Policy: store})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.host.Close() })
	for _, pair := range [][2]string{{"laptop", "gpu-host"}, {"laptop", "stranger"}, {"laptop", "gpu-spare"}, {"stranger", "gpu-host"}} {
		waitDirect(t, ctx, w.nodes[pair[0]], w.nodes[pair[1]])
	}
	return w
}

func render(t *testing.T, v any) (text, js []byte) {
	t.Helper()
	var a, b bytes.Buffer
	switch v := v.(type) {
	case diag.Report:
		if err := diag.WriteStatus(&a, v); err != nil {
			t.Fatal(err)
		}
	case []diag.Check:
		if err := diag.WriteChecks(&a, v); err != nil {
			t.Fatal(err)
		}
	}
	if err := diag.WriteJSON(&b, v); err != nil {
		t.Fatal(err)
	}
	return a.Bytes(), b.Bytes()
}

// TestGolden runs status and doctor on an embedded tailnet: a GPU host
// that lets the laptop in, a stranger it does not know, a spare machine
// that serves nothing; then with the host gone.
func TestGolden(t *testing.T) {
	if testing.Short() {
		t.Skip("joins an embedded tailnet")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	w := startWorld(t, ctx)
	fast := 2 * time.Second

	status := func(t *testing.T, from string, opts diag.Options, name string) {
		rep, err := diag.Status(ctx, w.nodes[from], opts)
		if err != nil {
			t.Fatal(err)
		}
		text, js := render(t, rep)
		golden(t, name+".txt", text)
		golden(t, name+".json", js)
	}
	doctor := func(t *testing.T, from string, opts diag.Options, name string, wantFail bool) {
		cs := diag.Doctor(ctx, w.nodes[from], opts)
		if diag.Failed(cs) != wantFail {
			t.Errorf("Failed = %v; want %v", diag.Failed(cs), wantFail)
		}
		text, js := render(t, cs)
		golden(t, name+".txt", text)
		golden(t, name+".json", js)
	}

	t.Run("status", func(t *testing.T) { status(t, "laptop", diag.Options{Timeout: fast}, "status") })
	t.Run("status one host", func(t *testing.T) {
		status(t, "laptop", diag.Options{Hosts: []string{"gpu-host", "gpu-nowhere"}, Timeout: fast}, "status_hosts")
	})
	t.Run("doctor", func(t *testing.T) { doctor(t, "laptop", diag.Options{Timeout: fast}, "doctor", false) })
	t.Run("doctor denied", func(t *testing.T) {
		doctor(t, "stranger", diag.Options{Hosts: []string{"gpu-host"}, Timeout: fast}, "doctor_denied", true)
	})
	t.Run("doctor service down", func(t *testing.T) {
		doctor(t, "laptop", diag.Options{Hosts: []string{"gpu-spare"}, Timeout: fast}, "doctor_service_down", true)
	})
	t.Run("doctor unknown host", func(t *testing.T) {
		doctor(t, "laptop", diag.Options{Hosts: []string{"gpu-nowhere"}, Timeout: fast}, "doctor_unknown", true)
	})
	t.Run("doctor needs CUDA", func(t *testing.T) {
		doctor(t, "laptop", diag.Options{Hosts: []string{"gpu-host"}, NeedCUDA: "12.4", Timeout: fast}, "doctor_need_cuda", true)
	})
	t.Run("local API", func(t *testing.T) {
		// The same answers through a running node's socket.
		sock := filepath.Join(t.TempDir(), diag.SocketName)
		api, err := diag.ServeLocal(sock, w.nodes["stranger"])
		if err != nil {
			t.Fatal(err)
		}
		defer api.Close()
		if _, err := diag.ServeLocal(sock, w.nodes["stranger"]); err == nil {
			t.Fatal("a second local API on the same socket")
		}
		c := diag.LocalClient{Path: sock}
		cs, err := c.Doctor(ctx, diag.Options{Hosts: []string{"gpu-host"}, Timeout: fast})
		if err != nil {
			t.Fatal(err)
		}
		text, _ := render(t, cs)
		golden(t, "doctor_denied.txt", text)
		if err := api.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Status(ctx, diag.Options{}); err != diag.ErrNotRunning {
			t.Fatalf("Status after Close = %v; want ErrNotRunning", err)
		}
	})

	// The host goes away: its node leaves, the control server still lists it.
	w.host.Close()
	w.nodes["gpu-host"].Close()
	t.Run("status host down", func(t *testing.T) {
		status(t, "laptop", diag.Options{Hosts: []string{"gpu-host"}, Timeout: fast}, "status_host_down")
	})
	t.Run("doctor host down", func(t *testing.T) {
		doctor(t, "laptop", diag.Options{Hosts: []string{"gpu-host"}, Timeout: fast}, "doctor_host_down", true)
	})
}
