package kube_test

import (
	"context"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/gpusvc/preface"
	"github.com/gpumesh/gpumesh/kube"
	"github.com/gpumesh/gpumesh/kube/kubetest"
	"github.com/gpumesh/gpumesh/overlay"
)

func p50(d []time.Duration) time.Duration {
	slices.Sort(d)
	return d[len(d)/2]
}

// benchPolicy trusts the agent to name its pods and grants both the
// agent's own connections and the pods of namespace default every kernel.
const benchPolicy = `
version = 1
kubernetes {
  trusted_agents = ["tag:k8s"]
}
rule "agents and pods" {
  subjects = ["tag:k8s", "k8s:default/*"]
  gpus     = ["*"]
  kernels  = ["*"]
}
`

// BenchmarkTunnelCall measures a small Compute call (saxpy on 256 floats)
// from a pod's side of a tunnel (Unix socket, the agent's forwarder naming
// the pod, the tailnet) against the same call made directly on the
// tailnet by the agent's node (its own preface), interleaved in one run;
// x-direct is the ratio of the medians. Each client keeps its connection
// (the shared Compute stream), so the preface, once per connection, is
// not in the calls measured.
func BenchmarkTunnelCall(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	m := kubetest.StartMesh(b, "k8s-node-1", benchPolicy)
	m.AddHost(b, "gpu-host", "tag:gpu")
	hosts, err := kube.StartStatic(ctx, kube.StaticConfig{Names: []string{"gpu-host"}, Overlay: m.Agent, NamePods: true})
	if err != nil {
		b.Fatal(err)
	}
	defer hosts.Close()
	ts, err := kube.OpenTunnels(kube.TunnelConfig{Dir: filepath.Join(b.TempDir(), "t"), Dial: hosts.Dial, NamePods: true})
	if err != nil {
		b.Fatal(err)
	}
	defer ts.Close()
	pod := &overlay.Pod{Namespace: "default", ServiceAccount: "default", Name: "bench", UID: "bench-uid"}
	tun, err := ts.Open(kube.TunnelSpec{ID: "bench", Owner: "bench", Host: "gpu-host", GPU: 0, Pod: pod})
	if err != nil {
		b.Fatal(err)
	}
	tunnel := unixClient(b, tun.Socket())
	direct, err := gpusvc.NewClient("gpu-host:"+strconv.Itoa(gpusvc.DefaultPort), func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := m.Agent.Dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if err := preface.Handshake(ctx, conn, preface.Preface{Op: preface.Connect}); err != nil {
			conn.Close()
			return nil, err
		}
		return conn, nil
	})
	if err != nil {
		b.Fatal(err)
	}
	defer direct.Close()

	x := make([]float32, 256)
	for i := range x {
		x[i] = float32(i)
	}
	args := []kernel.Arg{
		{Kind: kernel.ArgScalar, Scalar: 2},
		{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32([]int64{256}, x)},
		{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32([]int64{256}, x)},
	}
	call := func(c *gpusvc.Client) {
		if _, err := c.Compute(ctx, "saxpy", args...); err != nil {
			b.Fatal(err)
		}
	}
	// Warm both paths: connections, streams.
	call(direct)
	call(tunnel)
	var ds, ts2 []time.Duration
	for b.Loop() {
		t0 := time.Now()
		call(direct)
		t1 := time.Now()
		call(tunnel)
		ts2 = append(ts2, time.Since(t1))
		ds = append(ds, t1.Sub(t0))
	}
	d, t := p50(ds), p50(ts2)
	b.ReportMetric(float64(d.Microseconds()), "direct-p50-µs")
	b.ReportMetric(float64(t.Microseconds()), "tunnel-p50-µs")
	b.ReportMetric(float64(t)/float64(d), "x-direct")
}
