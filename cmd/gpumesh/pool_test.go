package main

import (
	"bufio"
	"context"
	"io"
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
// would pick; `gpumesh cp FILE tag:gpu:` uploads to a host it names.
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
	nodes := make([]*tsnet.Node, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, name := range []string{"gpu-a", "gpu-b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nodes[i], errs[i] = tn.Join(ctx, name, "tag:gpu")
		}()
	}
	wg.Wait()
	for i, n := range nodes {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		defer n.Close()
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
	if err != nil || !regexp.MustCompile(`^gpu-[ab]:\d+/\d+\n$`).MatchString(out) {
		t.Errorf("cp FILE tag:gpu: = %v\n%q", err, out)
	}
	if _, err := runKeysCmd(t, "", append([]string{"cp", "tag:gpu:7/1", file}, join("copier2")...)...); err == nil || !strings.Contains(err.Error(), "one host") {
		t.Errorf("cp tag:gpu:7/1 FILE = %v, want a refusal: a buffer lives on one host", err)
	}
}
