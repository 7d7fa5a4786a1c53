package forward_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"tailscale.com/ipn/store/mem"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/overlay/forward"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
	"github.com/gpumesh/gpumesh/policy"
)

const cloudPolicy = `
version = 1

rule "cloud" {
  subjects = ["cloud"]
  gpus     = ["*"]
  kernels  = ["*"]
}
`

// gpuHost is a tailnet node serving the CPU backend; it can be stopped
// (the service goes away, the node stays), taken off the tailnet and
// brought back with the same identity.
type gpuHost struct {
	t     *testing.T
	tn    *overlaytest.Tailnet
	name  string
	store *mem.Store // the node's state: rejoining with it keeps its name and IP
	pol   *policy.Policy

	node   *tsnet.Node
	srv    *gpusvc.Server
	served chan struct{}
}

func startGPUHost(ctx context.Context, t *testing.T, tn *overlaytest.Tailnet, name string) *gpuHost {
	t.Helper()
	pol, err := policy.Parse("cloud.hcl", []byte(cloudPolicy))
	if err != nil {
		t.Fatal(err)
	}
	h := &gpuHost{t: t, tn: tn, name: name, store: new(mem.Store), pol: pol}
	if err := h.join(ctx); err != nil {
		t.Fatal(err)
	}
	h.serve()
	t.Cleanup(func() {
		h.stop()
		h.leave()
	})
	return h
}

func (h *gpuHost) join(ctx context.Context) error {
	cfg := h.tn.NodeConfig(h.name)
	cfg.Store = h.store
	n, err := tsnet.New(cfg)
	if err != nil {
		return err
	}
	if _, err := n.Up(ctx); err != nil {
		n.Close()
		return err
	}
	h.node = n
	return nil
}

func (h *gpuHost) leave() {
	if h.node != nil {
		h.node.Close()
		h.node = nil
	}
}

func (h *gpuHost) serve() {
	h.t.Helper()
	srv, err := gpusvc.NewServer(gpusvc.Config{
		Backend: cpu.New(),
		WhoIs:   h.node.WhoIs,
		Policy:  func() *policy.Policy { return h.pol },
		Host:    h.name,
	})
	if err != nil {
		h.t.Fatal(err)
	}
	ln, err := h.node.Listen("tcp", ":"+strconv.Itoa(gpusvc.DefaultPort))
	if err != nil {
		h.t.Fatal(err)
	}
	h.srv, h.served = srv, make(chan struct{})
	go func() {
		defer close(h.served)
		srv.Serve(ln)
	}()
}

func (h *gpuHost) stop() {
	if h.srv != nil {
		h.srv.Stop()
		<-h.served
		h.srv = nil
	}
}

// localClient is what a program on the cloud machine does: plain gRPC to
// the forwarder's loopback address, no overlay in sight.
func localClient(t *testing.T, addr string) pb.GPUClient {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return pb.NewGPUClient(cc)
}

func matmulRequest() *pb.ComputeRequest {
	a := kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32([]int64{2, 3}, []float32{1, 2, 3, 4, 5, 6})}
	b := kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32([]int64{3, 2}, []float32{7, 8, 9, 10, 11, 12})}
	return &pb.ComputeRequest{Kernel: "matrix_mul", Args: gpusvc.ArgsToPB([]kernel.Arg{a, b})}
}

func checkMatmul(t *testing.T, res *pb.ComputeResponse) {
	t.Helper()
	got := gpusvc.TensorFromPB(res.GetOutputs()[0]).Float32s()
	if fmt.Sprint(got) != "[58 64 139 154]" {
		t.Fatalf("matrix_mul = %v; want [58 64 139 154]", got)
	}
}

// TestForwardOverTailnet: a cloud node forwards two loopback ports to two
// GPU hosts; plain gRPC clients on loopback reach each host, which sees the
// cloud node's tailnet identity. When a host's service stops or the host
// leaves the tailnet, calls fail with Unavailable, and recover when it is
// back, also when the host vanished without closing its connections.
func TestForwardOverTailnet(t *testing.T) {
	if testing.Short() {
		t.Skip("joins an embedded tailnet")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tn, err := overlaytest.Start(overlaytest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tn.Close() })

	var (
		wg     sync.WaitGroup
		hosts  [2]*gpuHost
		cloud  *tsnet.Node
		cloudE error
	)
	// Join the three nodes at once; t.Fatal must run on the test goroutine,
	// so the hosts join here and the cloud node in the background.
	wg.Add(1)
	go func() {
		defer wg.Done()
		cloud, cloudE = tn.Join(ctx, "cloud")
	}()
	hosts[0] = startGPUHost(ctx, t, tn, "gpu-a")
	hosts[1] = startGPUHost(ctx, t, tn, "gpu-b")
	wg.Wait()
	if cloudE != nil {
		t.Fatal(cloudE)
	}
	t.Cleanup(func() { cloud.Close() })

	fwd, err := forward.Start(forward.Config{
		Dial: cloud.Dial,
		Rules: []forward.Rule{
			{Listen: "127.0.0.1:0", Target: "gpu-a:50051"},
			{Listen: "localhost:0", Target: "gpu-b:50051"},
		},
		DialTimeout:   2 * time.Second,
		ProbeInterval: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fwd.Close() })
	clients := []pb.GPUClient{localClient(t, fwd.Addr(0).String()), localClient(t, fwd.Addr(1).String())}

	t.Run("several forwards, identity is the cloud node's", func(t *testing.T) {
		for i, c := range clients {
			dev, err := c.Devices(ctx, &pb.DevicesRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if dev.Host != hosts[i].name || dev.Caller != "cloud" {
				t.Errorf("forward %d: host %q caller %q; want host %q caller cloud", i, dev.Host, dev.Caller, hosts[i].name)
			}
			res, err := c.Compute(ctx, matmulRequest())
			if err != nil {
				t.Fatal(err)
			}
			checkMatmul(t, res)
		}
	})

	// recovered waits for a call to succeed once the host is back: the
	// call waits for the channel to become ready instead of failing fast.
	recovered := func(t *testing.T, c pb.GPUClient) {
		t.Helper()
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		res, err := c.Compute(rctx, matmulRequest(), grpc.WaitForReady(true))
		if err != nil {
			t.Fatalf("after the host came back: %v", err)
		}
		checkMatmul(t, res)
	}

	t.Run("service stops, then returns", func(t *testing.T) {
		h, c := hosts[0], clients[0]
		h.stop()
		_, err := c.Compute(ctx, matmulRequest())
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("call while the service is down: %v; want Unavailable", err)
		}
		// The other forward is unaffected.
		if _, err := clients[1].Compute(ctx, matmulRequest()); err != nil {
			t.Fatalf("other host while gpu-a is down: %v", err)
		}
		h.serve()
		recovered(t, c)
	})

	// The host vanishes without closing its connections (as in a power
	// loss): the client's connection through the forwarder stays open, and
	// only the forwarder's probe notices the host is gone.
	t.Run("host vanishes from the tailnet, then rejoins", func(t *testing.T) {
		h, c := hosts[1], clients[1]
		h.leave()
		_, err := c.Compute(ctx, matmulRequest())
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("call on the open connection after the host vanished: %v; want Unavailable", err)
		}
		_, err = c.Compute(ctx, matmulRequest())
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("call on a new connection while the host is gone: %v; want Unavailable", err)
		}
		h.stop()
		if err := h.join(ctx); err != nil {
			t.Fatal(err)
		}
		h.serve()
		recovered(t, c)
		dev, err := c.Devices(ctx, &pb.DevicesRequest{})
		if err != nil || dev.Caller != "cloud" {
			t.Fatalf("Devices after rejoin = %v, %v; want caller cloud", dev, err)
		}
	})
}
