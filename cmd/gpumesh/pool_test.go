package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
	"github.com/gpumesh/gpumesh/policy"
)

// TestPoolCommands: two GPU hosts carry tag:gpu. `gpumesh run tag:gpu`
// runs on one and names it; `gpumesh up --forward …=tag:gpu` puts two
// client connections on the two hosts; `status` and `doctor --host
// tag:gpu`, asking that up through its local API, say which host the pool
// would pick; `gpumesh cp FILE tag:gpu:` uploads to a host it names, on
// the pool's own connections to it.
func TestPoolCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("joins an embedded tailnet")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tn, err := overlaytest.Start(overlaytest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tn.Close()
	dir := t.TempDir()
	polPath := filepath.Join(dir, "policy.hcl")
	if err := os.WriteFile(polPath, []byte("version = 1\nrule \"all\" {\n  subjects = [\"*\"]\n  kernels = [\"*\"]\n  gpus = [\"*\"]\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	nodes := make([]*acceptCounter, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, name := range []string{"gpu-a", "gpu-b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var n *tsnet.Node
			n, errs[i] = tn.Join(ctx, name, "tag:gpu")
			nodes[i] = &acceptCounter{Node: n, by: map[string]int{}}
		}()
	}
	wg.Wait()
	for i, n := range nodes {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		defer n.Node.Close()
		store, err := policy.NewStore(polPath, t.Logf)
		if err != nil {
			t.Fatal(err)
		}
		h, err := node.StartHost(ctx, node.HostConfig{Overlay: n, Name: n.Hostname(), Policy: store})
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
	}
	join := func(name string) []string {
		return []string{"--control-url", tn.ControlURL, "--ephemeral", "--hostname", name, "--state-dir", filepath.Join(dir, name)}
	}

	out, err := runKeysCmd(t, "", append([]string{"run", "tag:gpu", "matrix_mul", "--size", "16"}, join("runner")...)...)
	if err != nil || !regexp.MustCompile(`on gpu-[ab] \(pool tag:gpu\).*matches local computation`).MatchString(out) {
		t.Errorf("run tag:gpu = %v\n%s", err, out)
	}

	upCtx, stopUp := context.WithCancel(ctx)
	defer stopUp()
	pr, pw := io.Pipe()
	root := newRootCmd()
	root.SetOut(pw)
	root.SetErr(pw)
	root.SetArgs(append([]string{"up", "--forward", "127.0.0.1:0=tag:gpu"}, join("cloud")...))
	upErr := make(chan error, 1)
	go func() {
		err := root.ExecuteContext(upCtx)
		pw.Close()
		upErr <- err
	}()
	lines := bufio.NewScanner(pr)
	forwardLine := regexp.MustCompile(`^gpumesh: forwarding (127\.0\.0\.1:\d+) -> pool tag:gpu$`)
	addr := ""
	var output []string
	for lines.Scan() {
		output = append(output, lines.Text())
		if m := forwardLine.FindStringSubmatch(lines.Text()); m != nil {
			addr = m[1]
		}
		if strings.Contains(lines.Text(), "ready") {
			break
		}
	}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for lines.Scan() {
		}
	}()
	defer func() { stopUp(); <-upErr; <-drained }()
	if addr == "" {
		t.Fatalf("gpumesh up printed %q; want a forwarding line to the pool", output)
	}
	// Two connections, kept open, land on the two hosts.
	seen := map[string]bool{}
	for range 2 {
		cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		dev, err := pb.NewGPUClient(cc).Devices(ctx, &pb.DevicesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if dev.GetCaller() != "cloud" {
			t.Errorf("through the forward the host sees %q, want cloud", dev.GetCaller())
		}
		seen[dev.GetHost()] = true
	}
	if !seen["gpu-a"] || !seen["gpu-b"] {
		t.Errorf("two connections through the pool's forward went to %v, want gpu-a and gpu-b", seen)
	}

	// status and doctor as the cloud node ask its running up.
	cloud := []string{"--control-url", tn.ControlURL, "--hostname", "cloud", "--state-dir", filepath.Join(dir, "cloud")}
	out, err = runKeysCmd(t, "", append([]string{"status", "--host", "tag:gpu", "--kernel", "saxpy"}, cloud...)...)
	if err != nil || !regexp.MustCompile(`pool tag:gpu:50051, for saxpy: gpu-[ab]\n  why: least estimated time to finish`).MatchString(out) {
		t.Errorf("status --host tag:gpu = %v\n%s", err, out)
	}
	out, err = runKeysCmd(t, "", append([]string{"doctor", "--host", "tag:gpu"}, cloud...)...)
	if err != nil || !regexp.MustCompile(`ok\s+pool tag:gpu:50051\s+2 hosts, 2 ready, 2 allow matrix_mul; would pick gpu-[ab]`).MatchString(out) {
		t.Errorf("doctor --host tag:gpu = %v\n%s", err, out)
	}

	file := filepath.Join(dir, "weights.bin")
	if err := os.WriteFile(file, []byte("0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = runKeysCmd(t, "", append([]string{"cp", file, "tag:gpu:", "--progress", "never"}, join("copier")...)...)
	if m := regexp.MustCompile(`^(gpu-[ab]):\d+/\d+\n$`).FindStringSubmatch(out); err != nil || m == nil {
		t.Errorf("cp FILE tag:gpu: = %v\n%q", err, out)
	} else {
		// The pool probed both hosts, one connection each; on the host it
		// picked, the upload went on the pool's client, which carries
		// Write on a second connection of its own. A second client for
		// the upload would make three.
		for _, n := range nodes {
			got, want := n.accepted("copier"), 1
			if n.Hostname() == m[1] {
				want = 2
			}
			if got < 1 || got > want {
				t.Errorf("%s accepted %d connections from the copier; want %d", n.Hostname(), got, want)
			}
		}
	}
	if _, err := runKeysCmd(t, "", append([]string{"cp", "tag:gpu:7/1", file}, join("copier2")...)...); err == nil || !strings.Contains(err.Error(), "one host") {
		t.Errorf("cp tag:gpu:7/1 FILE = %v, want a refusal: a buffer lives on one host", err)
	}
}

// acceptCounter is a tailnet node whose listeners count the connections
// they accept, by the caller's node name.
type acceptCounter struct {
	*tsnet.Node

	mu sync.Mutex
	by map[string]int // guarded by mu
}

func (a *acceptCounter) Listen(network, addr string) (net.Listener, error) {
	ln, err := a.Node.Listen(network, addr)
	if err != nil {
		return nil, err
	}
	return &countingListener{Listener: ln, a: a}, nil
}

// accepted is how many connections node opened to a's listeners.
func (a *acceptCounter) accepted(node string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.by[node]
}

type countingListener struct {
	net.Listener
	a *acceptCounter
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	id, err := l.a.WhoIs(ctx, c.RemoteAddr().String())
	cancel()
	name := "unknown"
	if err == nil {
		name = id.Node
	}
	l.a.mu.Lock()
	l.a.by[name]++
	l.a.mu.Unlock()
	return c, nil
}
