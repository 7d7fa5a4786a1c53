package deviceplugin_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/kube"
	"github.com/gpumesh/gpumesh/kube/deviceplugin"
	"github.com/gpumesh/gpumesh/kube/kubelettest"
	"github.com/gpumesh/gpumesh/kube/kubetest"
)

// health maps device IDs to their health in a ListAndWatch list.
func health(devs []*pb.Device) map[string]string {
	m := make(map[string]string)
	for _, d := range devs {
		m[d.GetID()] = d.GetHealth()
	}
	return m
}

// TestDevicePlugin runs the plugin against the test kubelet: it registers
// gpumesh.dev/gpu, lists two slots per remote GPU, allocates a slot whose
// tunnel a container uses to call its GPU host, marks a host that leaves
// the tailnet unhealthy, and registers again when the kubelet restarts.
func TestDevicePlugin(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	m := kubetest.StartMesh(t, "k8s-node-1", "")
	m.AddHost(t, "gpu-a", "tag:gpu")
	gpuB := m.AddHost(t, "gpu-b", "tag:gpu")
	hosts, err := kube.StartStatic(ctx, kube.StaticConfig{Names: []string{"gpu-a", "gpu-b"}, Overlay: m.Agent, Interval: 100 * time.Millisecond, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer hosts.Close()
	base := t.TempDir()
	tunnels, err := kube.OpenTunnels(kube.TunnelConfig{Dir: filepath.Join(base, "t"), Dial: hosts.Dial})
	if err != nil {
		t.Fatal(err)
	}
	defer tunnels.Close()
	kdir := filepath.Join(base, "device-plugins")
	if err := os.Mkdir(kdir, 0o755); err != nil {
		t.Fatal(err)
	}
	kubelet := kubelettest.StartDevicePluginKubelet(t, kdir)

	plugin, err := deviceplugin.New(deviceplugin.Config{Hosts: hosts, Tunnels: tunnels, Slots: 2, Dir: kdir})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- plugin.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-ran; err != nil {
			t.Errorf("Run = %v", err)
		}
	}()

	reg, err := kubelet.Registration(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if reg.GetResourceName() != "gpumesh.dev/gpu" || reg.GetVersion() != "v1beta1" || reg.GetEndpoint() != "gpumesh.sock" {
		t.Errorf("registration %v; want gpumesh.dev/gpu, v1beta1, gpumesh.sock", reg)
	}
	dp := kubelet.Connect(t, reg)
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	devs, err := dp.Watch(watchCtx)
	if err != nil {
		t.Fatal(err)
	}
	allHealthy := func(l []*pb.Device) bool {
		h := health(l)
		for _, id := range []string{"gpu-a-gpu0-0", "gpu-a-gpu0-1", "gpu-b-gpu0-0", "gpu-b-gpu0-1"} {
			if h[id] != pb.Healthy {
				return false
			}
		}
		return len(h) == 4
	}
	if _, err := kubelettest.WaitDevices(ctx, devs, "four healthy slots", allHealthy); err != nil {
		t.Fatal(err)
	}

	res, err := dp.Client.Allocate(ctx, &pb.AllocateRequest{ContainerRequests: []*pb.ContainerAllocateRequest{{DevicesIds: []string{"gpu-a-gpu0-1"}}}})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(res.GetContainerResponses()); n != 1 {
		t.Fatalf("%d container responses; want 1", n)
	}
	ctr := kubelettest.FromAllocation(res.GetContainerResponses()[0])
	target := ctr.Env["GPUMESH_TARGET"]
	if !strings.HasPrefix(target, "unix:///var/run/gpumesh/d-") || ctr.Env["GPUMESH_GPU"] != "0" || ctr.Env["GPUMESH_HOST"] != "gpu-a" {
		t.Errorf("env %v; want GPUMESH_TARGET in /var/run/gpumesh, GPU 0 of gpu-a", ctr.Env)
	}
	if len(ctr.Mounts) != 1 || !ctr.Mounts[0].ReadOnly || !strings.HasPrefix(target, "unix://"+ctr.Mounts[0].ContainerPath+"/") {
		t.Fatalf("mounts %+v; want one read-only mount holding %s", ctr.Mounts, target)
	}
	runContainer(ctx, t, ctr, "k8s-node-1")

	// A host that leaves the tailnet: its slots turn unhealthy.
	gpuB.Leave()
	if _, err := kubelettest.WaitDevices(ctx, devs, "gpu-b's slots unhealthy", func(l []*pb.Device) bool {
		h := health(l)
		return h["gpu-b-gpu0-0"] == pb.Unhealthy && h["gpu-b-gpu0-1"] == pb.Unhealthy && h["gpu-a-gpu0-0"] == pb.Healthy && h["gpu-a-gpu0-1"] == pb.Healthy
	}); err != nil {
		t.Fatal(err)
	}

	// The kubelet restarts (removing the plugin's socket): the plugin
	// registers again and lists its devices to the new kubelet.
	kubelet.Restart(t)
	reg, err = kubelet.Registration(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dp2 := kubelet.Connect(t, reg)
	devs2, err := dp2.Watch(watchCtx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kubelettest.WaitDevices(ctx, devs2, "the devices after the kubelet restart", func(l []*pb.Device) bool {
		h := health(l)
		return len(h) == 4 && h["gpu-a-gpu0-0"] == pb.Healthy && h["gpu-b-gpu0-0"] == pb.Unhealthy
	}); err != nil {
		t.Fatal(err)
	}
	// The old stream ended with the old server.
	for range devs {
	}
}

// runContainer runs compute.py as a container given ctr, when containers
// can run here; otherwise it calls through the tunnel's socket on the
// node side, saying so.
func runContainer(ctx context.Context, t *testing.T, ctr kubelettest.Container, wantCaller string) {
	t.Helper()
	if err := kubelettest.CanRun(); err != nil {
		t.Logf("no container here (%v): calling through the tunnel's node-side socket instead", err)
		sock := filepath.Join(ctr.Mounts[0].HostPath, kube.SocketName)
		c, err := gpusvc.NewClient("gpu:50051", func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		dev, err := c.Devices(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if dev.GetCaller() != wantCaller {
			t.Errorf("the host sees %q; want %q", dev.GetCaller(), wantCaller)
		}
		return
	}
	py := kubetest.Python(t)
	dir := kubetest.PythonExamples(t)
	cmd, err := ctr.Command(ctx, "/bin/sh", "-c", `exec "$0" -B "$1"/compute.py --target "$GPUMESH_TARGET" --size 8`, py, dir)
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.CombinedOutput()
	t.Logf("compute.py in the container:\n%s", out)
	if err != nil {
		t.Fatalf("compute.py: %v", err)
	}
	if !strings.Contains(string(out), "the host sees me as "+wantCaller) || !strings.Contains(string(out), "\nOK: ") {
		t.Errorf("compute.py's report does not show the host serving %s", wantCaller)
	}
}
