package gpumesh_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	"github.com/gpumesh/gpumesh/overlay/forward"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
	"github.com/gpumesh/gpumesh/policy"
)

// The lab the examples and tests run in: an embedded tailnet with a GPU
// host (the CPU backend), a cloud node forwarding a loopback port to it as
// `gpumesh up --forward` does, a laptop node in this process, and a
// stranger the policy does not know.
var (
	// forwarderAddr is the cloud node's forward, "127.0.0.1:PORT"; on a
	// real cloud machine it is "localhost:50051".
	forwarderAddr string
	// laptop is a tailnet node running in this process.
	laptop *tsnet.Node
	// stranger is a tailnet node that the host's policy does not allow.
	stranger *tsnet.Node
)

const labPolicy = `
version = 1

rule "team" {
  subjects = ["cloud", "laptop"]
  gpus     = ["*"]
  kernels  = ["*"]
}
`

func TestMain(m *testing.M) {
	stop, err := startLab()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gpumesh_test: lab:", err)
		os.Exit(1)
	}
	code := m.Run()
	stop()
	os.Exit(code)
}

func startLab() (stop func(), err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stops []func()
	stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	tn, err := overlaytest.Start(overlaytest.Options{})
	if err != nil {
		return nil, err
	}
	stops = append(stops, func() { tn.Close() })
	nodes := map[string]*tsnet.Node{}
	for _, name := range []string{"gpu-host", "cloud", "laptop", "stranger"} {
		n, err := tn.Join(ctx, name)
		if err != nil {
			return nil, err
		}
		nodes[name] = n
		stops = append(stops, func() { n.Close() })
	}
	laptop, stranger = nodes["laptop"], nodes["stranger"]

	pol, err := policy.Parse("lab.hcl", []byte(labPolicy))
	if err != nil {
		return nil, err
	}
	host := nodes["gpu-host"]
	srv, err := gpusvc.NewServer(gpusvc.Config{Backend: cpu.New(), WhoIs: host.WhoIs, Policy: func() *policy.Policy { return pol }, Host: "gpu-host"})
	if err != nil {
		return nil, err
	}
	ln, err := host.Listen("tcp", ":"+strconv.Itoa(gpusvc.DefaultPort))
	if err != nil {
		return nil, err
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln)
	}()
	stops = append(stops, func() { srv.Stop(); <-served })

	fwd, err := forward.Start(forward.Config{
		Dial:  nodes["cloud"].Dial,
		Rules: []forward.Rule{{Listen: "127.0.0.1:0", Target: "gpu-host:50051"}},
	})
	if err != nil {
		return nil, err
	}
	stops = append(stops, func() { fwd.Close() })
	forwarderAddr = fwd.Addr(0).String()
	if forwarderAddr == "" {
		return nil, errors.New("forwarder has no address")
	}
	return stop, nil
}
