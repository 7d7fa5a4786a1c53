package main

import (
	"bufio"
	"context"
	"io"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/policy"
)

func TestUpRefusesNonLoopback(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--forward", "0.0.0.0:0=gpu-host"}, "not loopback: 0.0.0.0"},
		{[]string{"--forward", ":50051=gpu-host"}, "not loopback: every interface"},
		{[]string{"--forward", "localhost:0=gpu-host", "--forward", "192.0.2.1:0=gpu-b"}, "--forward-any-address overrides this"},
		{[]string{"--forward", "localhost:50051"}, "want LISTEN=HOST[:PORT]"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			// The control URL leads nowhere: the refusal comes before any join.
			args := append([]string{"up", "--control-url", "http://127.0.0.1:1", "--state-dir", t.TempDir()}, tc.args...)
			out, err := runKeysCmd(t, "", args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("gpumesh %v = %v (output %q); want an error containing %q", args, err, out, tc.want)
			}
		})
	}
}

// TestUpForwards runs `gpumesh up --forward` against an embedded tailnet
// with a GPU host and calls the host through the printed local address.
func TestUpForwards(t *testing.T) {
	if testing.Short() {
		t.Skip("joins an embedded tailnet")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tn, err := overlaytest.Start(overlaytest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tn.Close()
	host, err := tn.Join(ctx, "gpu-host")
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	pol, err := policy.Parse("up.hcl", []byte(`
version = 1
rule "cloud" {
  subjects = ["cloud"]
  gpus     = ["*"]
  kernels  = ["*"]
}
`))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := gpusvc.NewServer(gpusvc.Config{Backend: cpu.New(), WhoIs: host.WhoIs, Policy: func() *policy.Policy { return pol }, Host: "gpu-host"})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := host.Listen("tcp", ":"+strconv.Itoa(gpusvc.DefaultPort))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln)
	}()
	defer func() { srv.Stop(); <-served }()

	upCtx, stopUp := context.WithCancel(ctx)
	defer stopUp()
	pr, pw := io.Pipe()
	root := newRootCmd()
	root.SetOut(pw)
	root.SetErr(pw)
	root.SetArgs([]string{"up", "--control-url", tn.ControlURL, "--state-dir", t.TempDir(),
		"--hostname", "cloud", "--ephemeral", "--forward", "127.0.0.1:0=gpu-host", "--forward", "127.0.0.1:0=gpu-host:50051"})
	upErr := make(chan error, 1)
	go func() {
		err := root.ExecuteContext(upCtx)
		pw.Close()
		upErr <- err
	}()

	lines := bufio.NewScanner(pr)
	forwardLine := regexp.MustCompile(`^gpumesh: forwarding (127\.0\.0\.1:\d+) -> gpu-host:50051$`)
	var addrs []string
	var output []string
	for lines.Scan() {
		output = append(output, lines.Text())
		if m := forwardLine.FindStringSubmatch(lines.Text()); m != nil {
			addrs = append(addrs, m[1])
		}
		if strings.Contains(lines.Text(), "ready") {
			break
		}
	}
	// Keep draining so that the command never blocks on its output.
	rest := make(chan []string, 1)
	go func() {
		var more []string
		for lines.Scan() {
			more = append(more, lines.Text())
		}
		rest <- more
	}()
	if len(addrs) != 2 {
		stopUp()
		t.Fatalf("gpumesh up printed %q; want two forwarding lines (err %v)", output, <-upErr)
	}
	for _, addr := range addrs {
		cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		dev, err := pb.NewGPUClient(cc).Devices(ctx, &pb.DevicesRequest{})
		cc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if dev.Caller != "cloud" || dev.Host != "gpu-host" {
			t.Errorf("through %s: caller %q host %q; want cloud, gpu-host", addr, dev.Caller, dev.Host)
		}
	}
	stopUp()
	if err := <-upErr; err != nil {
		t.Fatalf("gpumesh up: %v", err)
	}
	more := <-rest
	if !strings.Contains(strings.Join(more, "\n"), "shutting down") {
		t.Errorf("gpumesh up ended without saying so: %q", more)
	}
	for _, line := range append(output, more...) { // one style, its own lines and its logs alike
		if !strings.HasPrefix(line, "gpumesh: ") {
			t.Errorf("gpumesh up printed %q, not a \"gpumesh: \" line", line)
		}
	}
}
