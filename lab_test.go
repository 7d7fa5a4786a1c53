package gpumesh_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/overlay/forward"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
	"github.com/gpumesh/gpumesh/policy"
)

// The lab the examples and tests run in: an embedded tailnet with a GPU
// host (the CPU backend), a cloud node forwarding a loopback port to it as
// `gpumesh up --forward` does, a laptop node in this process, and a
// stranger the policy does not know; and a second GPU host, gpu-b, whose
// policy denies the laptop matrix_mul. Both hosts carry tag:gpu.
var (
	// forwarderAddr is the cloud node's forward, "127.0.0.1:PORT"; on a
	// real cloud machine it is "localhost:50051".
	forwarderAddr string
	// laptop is a tailnet node running in this process.
	laptop *tsnet.Node
	// stranger is a tailnet node that the host's policy does not allow.
	stranger *tsnet.Node
	// labHosts are the GPU hosts, by name.
	labHosts map[string]*labHost
)

const labPolicy = `
version = 1

rule "team" {
  subjects = ["cloud", "laptop"]
  gpus     = ["*"]
  kernels  = ["*"]
}
`

// gpuBPolicy is gpu-b's: as gpu-host's, but no matrix_mul for the laptop.
const gpuBPolicy = labPolicy + `
deny "no-matmul-for-laptop" {
  subjects = ["laptop"]
  kernels  = ["matrix_mul"]
}
`

// labHost is a GPU host of the lab: the CPU backend behind a gate that a
// test may close, holding softmax calls until it opens, and the count of
// the Compute calls each kernel ran there.
type labHost struct {
	*cpu.Backend
	name string

	mu      sync.Mutex
	gate    chan struct{}  // closed when open; nil while open; guarded by mu
	entered chan string    // where held calls say where they are; guarded by mu
	ran     map[string]int // allowed Compute calls by kernel; guarded by mu
}

func (h *labHost) Compute(ctx context.Context, c gpusvc.Call) (kernel.Tensor, error) {
	h.mu.Lock()
	gate, entered := h.gate, h.entered
	h.mu.Unlock()
	if gate != nil && c.Kernel == "softmax" {
		entered <- h.name
		select {
		case <-gate:
		case <-ctx.Done():
			return kernel.Tensor{}, ctx.Err()
		}
	}
	return h.Backend.Compute(ctx, c)
}

// hold makes softmax calls on the hosts wait, each saying on entered
// where it waits, until release.
func hold(entered chan string, hosts ...*labHost) (release func()) {
	gate := make(chan struct{})
	for _, h := range hosts {
		h.mu.Lock()
		h.gate, h.entered = gate, entered
		h.mu.Unlock()
	}
	return sync.OnceFunc(func() {
		for _, h := range hosts {
			h.mu.Lock()
			h.gate = nil
			h.mu.Unlock()
		}
		close(gate)
	})
}

// ranKernel returns how many allowed Compute calls of kernelName the host ran.
func (h *labHost) ranKernel(kernelName string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ran[kernelName]
}

func (h *labHost) record(r gpusvc.CallRecord) {
	if r.Method == "Compute" && r.Allow {
		h.mu.Lock()
		h.ran[r.Kernel]++
		h.mu.Unlock()
	}
}

// serveLab serves a lab host on n until stop.
func serveLab(n *tsnet.Node, name, src string) (h *labHost, stop func(), err error) {
	pol, err := policy.Parse(name+".hcl", []byte(src))
	if err != nil {
		return nil, nil, err
	}
	h = &labHost{Backend: cpu.New(), name: name, ran: map[string]int{}}
	srv, err := gpusvc.NewServer(gpusvc.Config{Backend: h, WhoIs: n.WhoIs, Policy: func() *policy.Policy { return pol }, Host: name, OnCall: h.record})
	if err != nil {
		return nil, nil, err
	}
	ln, err := n.Listen("tcp", ":"+strconv.Itoa(gpusvc.DefaultPort))
	if err != nil {
		return nil, nil, err
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln)
	}()
	return h, func() { srv.Stop(); <-served; h.Backend.Close() }, nil
}

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
	for _, name := range []string{"gpu-host", "gpu-b", "cloud", "laptop", "stranger"} {
		var tags []string
		if strings.HasPrefix(name, "gpu-") {
			tags = []string{"tag:gpu"}
		}
		n, err := tn.Join(ctx, name, tags...)
		if err != nil {
			return nil, err
		}
		nodes[name] = n
		stops = append(stops, func() { n.Close() })
	}
	laptop, stranger = nodes["laptop"], nodes["stranger"]

	labHosts = map[string]*labHost{}
	for name, src := range map[string]string{"gpu-host": labPolicy, "gpu-b": gpuBPolicy} {
		h, stop, err := serveLab(nodes[name], name, src)
		if err != nil {
			return nil, err
		}
		labHosts[name] = h
		stops = append(stops, stop)
	}

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
