package agent_test

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
	dppb "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	"k8s.io/utils/ptr"

	k8sdeploy "github.com/gpumesh/gpumesh/deploy/kubernetes"
	"github.com/gpumesh/gpumesh/diag"
	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/audit"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/kube"
	"github.com/gpumesh/gpumesh/kube/agent"
	"github.com/gpumesh/gpumesh/kube/deviceplugin"
	"github.com/gpumesh/gpumesh/kube/dra"
	"github.com/gpumesh/gpumesh/kube/kubelettest"
	"github.com/gpumesh/gpumesh/kube/kubetest"
	"github.com/gpumesh/gpumesh/overlay"
)

// nodeName is the Kubernetes node the agent serves, and its tailnet name.
const nodeName = "k8s-node-1"

// cluster is one test's world: a control plane, a tailnet with a GPU host,
// the node's kubelet directories and the agent serving them.
type cluster struct {
	cp    *kubetest.ControlPlane
	mesh  *kubetest.Mesh
	host  *kubetest.GPUHost
	dirs  dirs
	dpk   *kubelettest.DevicePluginKubelet
	prs   *kubelettest.PodResources
	agent *agent.Agent
}

// dirs are the node's directories the agent shares with the kubelet and
// the container runtime.
type dirs struct {
	kubelet                                                     string // holds the kubelet's directories below
	devicePlugins, registry, plugin, cdi, tunnels, podResources string
}

func newDirs(t testing.TB) dirs {
	t.Helper()
	base := t.TempDir()
	d := dirs{
		kubelet:       base,
		devicePlugins: filepath.Join(base, "device-plugins"),
		registry:      filepath.Join(base, "plugins_registry"),
		plugin:        filepath.Join(base, "plugins", dra.DriverName),
		cdi:           filepath.Join(base, "cdi"),
		tunnels:       filepath.Join(base, "t"),
		podResources:  filepath.Join(base, "pod-resources", "kubelet.sock"),
	}
	for _, p := range []string{d.devicePlugins, d.registry, d.plugin, d.cdi} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// hostPolicy is the GPU host's: it trusts the agent (tag:k8s) to name its
// pods. The agent's own connections (its probes) get every
// kernel from the rule naming its tag; the pods of the service account
// default/trainer get matrix_mul from theirs, with sessions that stay an
// hour idle, so that only the agent's release frees them fast.
const hostPolicy = `
version = 1

kubernetes {
  trusted_agents = ["tag:k8s"]
}

rule "kubernetes nodes" {
  subjects     = ["tag:k8s"]
  gpus         = ["*"]
  kernels      = ["*"]
  idle_timeout = "2s"
}

rule "trainers" {
  subjects     = ["k8s:default/trainer"]
  gpus         = ["*"]
  kernels      = ["matrix_mul"]
  idle_timeout = "1h"
}
`

// startCluster makes the node, the tailnet with its GPU host, the node's
// directories and the kubelet's device plugin socket, then starts the
// agent with the device plugin and DRA (publishing). The gpumesh-system
// namespace must exist (the manifests make it).
func startCluster(ctx context.Context, t testing.TB, cp *kubetest.ControlPlane) *cluster {
	t.Helper()
	c := &cluster{cp: cp}
	createNode(ctx, t, cp.Client, nodeName)
	c.mesh = kubetest.StartMesh(t, nodeName, hostPolicy)
	c.host = c.mesh.AddHost(t, "gpu-host", "tag:gpu", "tag:ml")
	c.dirs = newDirs(t)
	// The kubelet is up before the agent, as on a node.
	c.dpk = kubelettest.StartDevicePluginKubelet(t, c.dirs.devicePlugins)
	c.prs = kubelettest.StartPodResources(t, c.dirs.podResources)
	var err error
	c.agent, err = agent.Start(ctx, agent.Config{
		Overlay:            c.mesh.Agent,
		HostTarget:         "tag:gpu", // found in the peer list, as a pool finds it
		ProbeInterval:      200 * time.Millisecond,
		NodeName:           nodeName,
		Client:             cp.Client,
		TunnelDir:          c.dirs.tunnels,
		NamePods:           true,
		PodResourcesSocket: c.dirs.podResources,
		PodPollInterval:    100 * time.Millisecond,
		DevicePlugin:       true,
		DevicePluginDir:    c.dirs.devicePlugins,
		DRA:                true,
		RegistrarDir:       c.dirs.registry,
		PluginDir:          c.dirs.plugin,
		CDIDir:             c.dirs.cdi,
		Publish:            true,
		Namespace:          "gpumesh-system",
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestKubernetes runs the agent against a real control plane and the test
// kubelet, on an embedded tailnet with a GPU host serving the CPU backend.
// The manifests are applied first: the DRA flow uses their DeviceClass and
// namespace.
func TestKubernetes(t *testing.T) {
	cp := kubetest.Start(t, kubetest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	t.Run("manifests", func(t *testing.T) {
		applied, err := applyYAML(ctx, cp, k8sdeploy.Install, false)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("applied %s", strings.Join(applied, ", "))
		for _, want := range []string{"Namespace gpumesh-system", "DeviceClass gpu.gpumesh.dev", "DaemonSet gpumesh-agent", "ClusterRole gpumesh-agent"} {
			if !slices.Contains(applied, want) {
				t.Errorf("gpumesh.yaml does not apply %s", want)
			}
		}
		for name, ex := range map[string][]byte{"device plugin pod": k8sdeploy.ExampleDevicePluginPod, "claim template and pod": k8sdeploy.ExampleClaimPod} {
			applied, err := applyYAML(ctx, cp, ex, true)
			if err != nil {
				t.Errorf("example %s: %v", name, err)
			}
			t.Logf("example %s: the apiserver admits %s (dry run)", name, strings.Join(applied, ", "))
		}
		// A broken manifest fails: the checks above can fail.
		if _, err := applyYAML(ctx, cp, []byte("apiVersion: resource.k8s.io/v1\nkind: DeviceClass\nmetadata: {name: broken}\nspec: {selectors: [{cel: {expression: 'device.nosuchfield =='}}]}\n"), true); err == nil {
			t.Error("a DeviceClass with a broken CEL expression was accepted")
		}
	})
	if t.Failed() {
		return
	}

	c := startCluster(ctx, t, cp)
	defer func() {
		if err := c.agent.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			t.Errorf("agent close: %v", err)
		}
	}()

	t.Run("dra", func(t *testing.T) { c.testDRA(ctx, t) })
	t.Run("shared claim", func(t *testing.T) { c.testSharedClaim(ctx, t) })
	t.Run("doctor", func(t *testing.T) { c.testDoctor(ctx, t) })
	t.Run("device plugin", func(t *testing.T) { c.testDevicePlugin(ctx, t) })
	t.Run("publisher failover", func(t *testing.T) { c.testFailover(ctx, t) })
}

// testFailover: a second agent's publisher waits while the first holds
// the Lease, and takes over as soon as the first stops.
func (c *cluster) testFailover(ctx context.Context, t *testing.T) {
	p2, err := dra.NewPublisher(dra.PublisherConfig{
		Client: c.cp.Client, Hosts: c.agent.Hosts(), Namespace: "gpumesh-system", Identity: "k8s-node-2",
		LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	changed := p2.Changed()
	pctx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- p2.Run(pctx) }()
	defer func() {
		stop()
		if err := <-ran; err != nil {
			t.Errorf("second publisher: %v", err)
		}
	}()
	holder := func() string {
		l, err := c.cp.Client.CoordinationV1().Leases("gpumesh-system").Get(ctx, dra.LeaseName, metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			return ""
		}
		return *l.Spec.HolderIdentity
	}
	if h := holder(); h != nodeName {
		t.Fatalf("the Lease is held by %q; want %s", h, nodeName)
	}
	if p2.Leading() {
		t.Fatal("two publishers lead at once")
	}
	if err := c.agent.Close(); err != nil {
		t.Fatal(err)
	}
	for !p2.Leading() {
		select {
		case <-changed:
			changed = p2.Changed()
		case <-ctx.Done():
			t.Fatalf("the second publisher never took over; the Lease is held by %q", holder())
		}
	}
	if h := holder(); h != "k8s-node-2" {
		t.Errorf("the Lease is held by %q; want k8s-node-2", h)
	}
}

// testDRA: the agent publishes the GPU host's slice; a pod whose claim
// template selects by tag is scheduled by the real scheduler onto the node;
// the test kubelet has the agent prepare the claim; a process in a
// container with exactly the CDI edits runs matrix_mul and holds a buffer;
// deleting the pod unprepares the claim, cuts the process off and the host
// frees the buffer.
func (c *cluster) testDRA(ctx context.Context, t *testing.T) {
	client := c.cp.Client
	var slice resourceapi.ResourceSlice
	eventually(ctx, t, "the gpu-host ResourceSlice", func() (bool, error) {
		l, err := client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, s := range l.Items {
			if s.Spec.Driver == dra.DriverName && s.Spec.Pool.Name == "gpu-host" {
				slice = s
				return true, nil
			}
		}
		return false, nil
	})
	if !ptrTrue(slice.Spec.AllNodes) || slice.Spec.NodeName != nil || len(slice.Spec.Devices) != 1 {
		t.Fatalf("slice %+v; want one device on all nodes", slice.Spec)
	}
	d := slice.Spec.Devices[0]
	if d.Name != "gpu-0" || str(d.Attributes[dra.AttrHost]) != "gpu-host" || str(d.Attributes[dra.AttrTags]) != "tag:gpu,tag:ml" || str(d.Attributes[dra.AttrBackend]) != "cpu" {
		t.Errorf("device %+v; want gpu-0 of gpu-host tagged tag:gpu,tag:ml", d)
	}
	if !c.agent.Status().Publishing {
		t.Error("the only agent does not say it publishes")
	}

	// The claim template selects by tag with CEL, as the example does.
	tmpl := &resourceapi.ResourceClaimTemplate{
		ObjectMeta: metav1.ObjectMeta{Name: "ml-gpu", Namespace: "default"},
		Spec: resourceapi.ResourceClaimTemplateSpec{Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{
			Requests: []resourceapi.DeviceRequest{{Name: "gpu", Exactly: &resourceapi.ExactDeviceRequest{
				DeviceClassName: dra.DeviceClassName,
				Selectors: []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{
					Expression: `"tag:ml" in device.attributes["` + dra.DriverName + `"].tags.split(",")`,
				}}},
			}}},
		}}},
	}
	if _, err := client.ResourceV1().ResourceClaimTemplates("default").Create(ctx, tmpl, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "trainer", Namespace: "default"}}
	if _, err := client.CoreV1().ServiceAccounts("default").Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "trainer", Namespace: "default"},
		Spec: corev1.PodSpec{
			ServiceAccountName: "trainer",
			ResourceClaims:     []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimTemplateName: ptr.To("ml-gpu")}},
			Containers: []corev1.Container{{
				Name: "main", Image: "registry.invalid/never-runs",
				Resources: corev1.ResourceRequirements{Claims: []corev1.ResourceClaim{{Name: "gpu"}}},
			}},
		},
	}
	created := time.Now()
	if _, err := client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	bound := waitBound(ctx, t, client, "default", "trainer")
	podUID := string(bound.UID)
	boundAt := time.Now()
	if bound.Spec.NodeName != nodeName {
		t.Fatalf("pod bound to %q; want %s", bound.Spec.NodeName, nodeName)
	}
	// The kubelet reads the claim's name from the pod's status.
	var claimName string
	eventually(ctx, t, "the pod's generated claim", func() (bool, error) {
		p, err := client.CoreV1().Pods("default").Get(ctx, "trainer", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, s := range p.Status.ResourceClaimStatuses {
			if s.Name == "gpu" && s.ResourceClaimName != nil {
				claimName = *s.ResourceClaimName
				return true, nil
			}
		}
		return false, nil
	})
	claim, err := client.ResourceV1().ResourceClaims("default").Get(ctx, claimName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if a := claim.Status.Allocation; a == nil || len(a.Devices.Results) != 1 || a.Devices.Results[0].Pool != "gpu-host" || a.Devices.Results[0].Device != "gpu-0" {
		t.Fatalf("claim allocation %+v; want gpu-host's gpu-0", claim.Status.Allocation)
	}

	dk := &kubelettest.DRAKubelet{RegistryDir: c.dirs.registry}
	plugin, err := dk.WaitPlugin(ctx, t, dra.DriverName)
	if err != nil {
		t.Fatal(err)
	}
	kclaim := kubelettest.Claim{Namespace: "default", Name: claimName, UID: claim.UID}
	devs, err := plugin.Prepare(ctx, kclaim)
	if err != nil {
		t.Fatal(err)
	}
	prepared := time.Now()
	t.Logf("pod creation -> bound %v -> claim prepared %v (total %v); kubelet speaks %s",
		boundAt.Sub(created).Round(time.Millisecond), prepared.Sub(boundAt).Round(time.Millisecond), prepared.Sub(created).Round(time.Millisecond), plugin.Service)
	if !c.agent.Status().DRARegistered {
		t.Error("the agent does not know the kubelet registered its DRA plugin")
	}
	ids := kubelettest.CDIDeviceIDs(devs)
	if len(devs) != 1 || devs[0].GetPoolName() != "gpu-host" || devs[0].GetDeviceName() != "gpu-0" || len(ids) != 1 || !strings.HasPrefix(ids[0], dra.CDIKind+"=") {
		t.Fatalf("prepared devices %v; want gpu-host/gpu-0 with one %s CDI device", devs, dra.CDIKind)
	}
	ctr, err := kubelettest.FromCDI(c.dirs.cdi, ids)
	if err != nil {
		t.Fatal(err)
	}
	if ctr.Env["GPUMESH_GPU"] != "0" || !strings.HasPrefix(ctr.Env["GPUMESH_TARGET"], "unix:///var/run/gpumesh/") || len(ctr.Mounts) != 1 {
		t.Fatalf("container %+v; want GPUMESH_TARGET under /var/run/gpumesh, GPU 0, one mount", ctr)
	}
	// Preparing again (a restarted kubelet does) gives the same devices.
	if again, err := plugin.Prepare(ctx, kclaim); err != nil || !slices.Equal(kubelettest.CDIDeviceIDs(again), ids) {
		t.Errorf("preparing again = %v, %v; want the same CDI devices %v", again, err, ids)
	}

	// The pod's process, when containers can run here (root).
	var proc *proc
	if err := kubelettest.CanRun(); err != nil {
		t.Logf("the pod's process cannot run here (%v): the claim is checked without it", err)
	} else {
		py := kubetest.Python(t)
		cmd, err := ctr.Command(ctx, py, "-B", filepath.Join("testdata", "hold.py"), kubetest.PythonExamples(t))
		if err != nil {
			t.Fatal(err)
		}
		proc = start(t, cmd)
		proc.waitLine(ctx, t, "holding ")
		out := proc.output()
		t.Logf("the pod's process:\n%s", out)
		// The host sees the pod, through the node's agent.
		if !strings.Contains(out, "the host sees me as k8s:default/trainer via "+nodeName) || !strings.Contains(out, "matrix_mul 8x8 ok") {
			t.Fatalf("the process did not run matrix_mul on gpu-host as k8s:default/trainer via %s", nodeName)
		}
		if held := c.host.HeldBytes(ctx); held < 256<<10 {
			t.Fatalf("the host holds %d bytes; want the process's 256 KiB buffer", held)
		}
		calls, _ := c.host.Calls()
		if !slices.ContainsFunc(calls, func(r gpusvc.CallRecord) bool {
			p := r.Caller.Pod
			return r.Kernel == "matrix_mul" && r.Allow && r.Rule == "trainers" && r.Caller.Node == nodeName &&
				p != nil && p.Namespace == "default" && p.ServiceAccount == "trainer" && p.Name == "trainer" && p.UID == podUID
		}) {
			t.Errorf("the host recorded no matrix_mul from pod default/trainer via %s allowed by rule trainers: %+v", nodeName, calls)
		}
		c.checkAudit(ctx, t, "trainer", podUID)
		// The pod's rule decides: it grants matrix_mul, not relu, though
		// the node's own rule grants every kernel.
		pc := unixClient(t, filepath.Join(ctr.Mounts[0].HostPath, kube.SocketName))
		_, err = pc.Compute(ctx, "relu", kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32([]int64{2}, []float32{-1, 1})})
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("relu from the pod = %v; want PermissionDenied (rule trainers grants matrix_mul only)", err)
		}
	}

	// The pod is deleted: the kubelet unprepares its claim, and the agent
	// releases the pod on the host, which frees its buffer before it
	// answers (the rule's idle timeout is an hour).
	deletePod(ctx, t, client, "default", "trainer")
	if err := plugin.Unprepare(ctx, kclaim); err != nil {
		t.Fatal(err)
	}
	if held := c.host.HeldBytes(ctx); held != 0 {
		t.Errorf("the host still holds %d bytes once the claim is unprepared; want the pod's buffer freed", held)
	}
	// The host records the release once it has answered it.
	eventually(ctx, t, "the host to record the release of pod trainer", func() (bool, error) {
		calls, _ := c.host.Calls()
		return slices.ContainsFunc(calls, func(r gpusvc.CallRecord) bool {
			return r.Method == "release" && r.Caller.Pod != nil && r.Caller.Pod.UID == podUID && r.Caller.Node == nodeName
		}), nil
	})
	if proc != nil {
		if err := proc.wait(ctx, t); err != nil {
			t.Fatalf("the process failed: %v\n%s", err, proc.output())
		}
		if !strings.Contains(proc.output(), "after: UNAVAILABLE") {
			t.Errorf("after unprepare the process could still call: %s", proc.output())
		}
	}
	if _, err := os.Stat(ctr.Mounts[0].HostPath); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the tunnel's directory is still there: %v", err)
	}
	if specs, _ := filepath.Glob(filepath.Join(c.dirs.cdi, "*.json")); len(specs) != 0 {
		t.Errorf("CDI specs left: %v", specs)
	}
	// Unpreparing again is not an error.
	if err := plugin.Unprepare(ctx, kclaim); err != nil {
		t.Errorf("unpreparing again: %v", err)
	}
	// The controller-manager frees the device: the claim is deallocated
	// (deleting it is the garbage collector's job, which does not run
	// here).
	eventually(ctx, t, "the claim deallocated", func() (bool, error) {
		return claimFreed(ctx, client, claimName)
	})
}

// testSharedClaim: a claim several pods share is named to the host by the
// claim, not by one of its pods, and only when they share a service
// account (the host could not tell them apart otherwise): a claim reserved
// for pods of two service accounts is not prepared, one reserved for pods
// of one is, as k8s:default/trainer with the claim's UID.
func (c *cluster) testSharedClaim(ctx context.Context, t *testing.T) {
	client := c.cp.Client
	claim := &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "shared", Namespace: "default"},
		Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{
			Requests: []resourceapi.DeviceRequest{{Name: "gpu", Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: dra.DeviceClassName}}},
		}},
	}
	claim, err := client.ResourceV1().ResourceClaims("default").Create(ctx, claim, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The pods use the claim and are bound to the node already, so the
	// scheduler leaves them (and the claim) alone.
	pods := map[string]string{"shared-a": "trainer", "shared-b": "trainer", "shared-c": "default"}
	uids := map[string]types.UID{}
	for _, name := range slices.Sorted(maps.Keys(pods)) {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
			Spec: corev1.PodSpec{
				NodeName:           nodeName,
				ServiceAccountName: pods[name],
				ResourceClaims:     []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimName: ptr.To("shared")}},
				Containers: []corev1.Container{{
					Name: "main", Image: "registry.invalid/never-runs",
					Resources: corev1.ResourceRequirements{Claims: []corev1.ResourceClaim{{Name: "gpu"}}},
				}},
			},
		}
		created, err := client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		uids[name] = created.UID
	}
	// reserve allocates the claim and reserves it for names, as the
	// scheduler would; the resourceclaim controller updates it too, so a
	// conflict is retried on the claim as it is now.
	reserve := func(names ...string) {
		t.Helper()
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			cl, err := client.ResourceV1().ResourceClaims("default").Get(ctx, "shared", metav1.GetOptions{})
			if err != nil {
				return err
			}
			cl.Status.Allocation = &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{
				Results: []resourceapi.DeviceRequestAllocationResult{{Request: "gpu", Driver: dra.DriverName, Pool: "gpu-host", Device: "gpu-0"}},
			}}
			cl.Status.ReservedFor = nil
			for _, n := range names {
				cl.Status.ReservedFor = append(cl.Status.ReservedFor, resourceapi.ResourceClaimConsumerReference{Resource: "pods", Name: n, UID: uids[n]})
			}
			_, err = client.ResourceV1().ResourceClaims("default").UpdateStatus(ctx, cl, metav1.UpdateOptions{})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	plugin, err := (&kubelettest.DRAKubelet{RegistryDir: c.dirs.registry}).WaitPlugin(ctx, t, dra.DriverName)
	if err != nil {
		t.Fatal(err)
	}
	kclaim := kubelettest.Claim{Namespace: "default", Name: "shared", UID: claim.UID}

	reserve("shared-a", "shared-c")
	if _, err := plugin.Prepare(ctx, kclaim); err == nil || !strings.Contains(err.Error(), "could not tell them apart") {
		t.Errorf("preparing a claim shared by two service accounts: %v; want refused", err)
	}
	if specs := c.agent.Tunnels().List(); len(specs) != 0 {
		t.Errorf("tunnels left by a refused claim: %+v", specs)
	}

	// The controller-manager reserves an allocated claim for every pod
	// bound to a node that uses it (resourceclaim controller, reserveFor):
	// shared-c must be gone, or it may be added back at any moment.
	deletePod(ctx, t, client, "default", "shared-c")
	reserve("shared-a", "shared-b")
	if _, err := plugin.Prepare(ctx, kclaim); err != nil {
		t.Fatal(err)
	}
	specs := c.agent.Tunnels().List()
	want := overlay.Pod{Namespace: "default", ServiceAccount: "trainer", UID: string(claim.UID), Allocation: string(claim.UID)}
	if len(specs) != 1 || specs[0].Pod == nil || *specs[0].Pod != want {
		t.Errorf("the shared claim's tunnels %+v; want one naming %+v", specs, want)
	}
	if err := plugin.Unprepare(ctx, kclaim); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"shared-a", "shared-b"} {
		deletePod(ctx, t, client, "default", name)
	}
	if err := client.ResourceV1().ResourceClaims("default").Delete(ctx, "shared", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

// checkAudit waits for the host's audit log to name the pod: a matrix_mul
// allowed by rule trainers, from the node and the pod.
func (c *cluster) checkAudit(ctx context.Context, t *testing.T, podName, podUID string) {
	t.Helper()
	eventually(ctx, t, "the audit log to name the pod", func() (bool, error) {
		lines, err := audit.Tail(c.host.AuditPath, 0)
		if err != nil {
			return false, err
		}
		for _, l := range lines {
			var e audit.Entry
			if err := json.Unmarshal(l, &e); err != nil {
				return false, err
			}
			if p := e.Pod; p != nil && e.Method != "Explain" && e.Kernel == "matrix_mul" && e.Decision == "allow" && e.Rule == "trainers" && e.Node == nodeName &&
				p.Namespace == "default" && p.ServiceAccount == "trainer" && p.Name == podName && p.UID == podUID {
				t.Logf("audit: %s", l)
				return true, nil
			}
		}
		return false, nil
	})
}

// testDevicePlugin: the plugin registered with the test kubelet, which
// advertises its healthy devices in the Node's status; a pod asking for
// gpumesh.dev/gpu is bound by the real scheduler; the kubelet allocates a
// device; a connection through its tunnel is refused until the kubelet's
// PodResources API says which pod holds the device; then a container with
// exactly that env and mount runs hold.py as that pod (the host's audit
// names it); once the pod is gone from PodResources the agent releases it
// and the host frees its buffer; the GPU host leaving turns the device unhealthy; a kubelet restart gets
// a new registration.
func (c *cluster) testDevicePlugin(ctx context.Context, t *testing.T) {
	client := c.cp.Client
	reg, err := c.dpk.Registration(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if reg.GetResourceName() != deviceplugin.ResourceName {
		t.Fatalf("registered %q; want %s", reg.GetResourceName(), deviceplugin.ResourceName)
	}
	dp := c.dpk.Connect(t, reg)
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	lists, err := dp.Watch(wctx)
	if err != nil {
		t.Fatal(err)
	}
	devs, err := kubelettest.WaitDevices(ctx, lists, "gpu-host-gpu0 healthy", func(l []*dppb.Device) bool {
		return len(l) == 1 && l[0].GetID() == "gpu-host-gpu0" && l[0].GetHealth() == dppb.Healthy
	})
	if err != nil {
		t.Fatal(err)
	}
	// The kubelet reports the healthy devices as the node's capacity.
	setExtended(ctx, t, client, len(devs))

	// The pod runs as the service account default/trainer, whose rule
	// grants matrix_mul with sessions that stay an hour idle.
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "trainer", Namespace: "default"}}
	if _, err := client.CoreV1().ServiceAccounts("default").Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "inference", Namespace: "default"},
		Spec: corev1.PodSpec{ServiceAccountName: "trainer", Containers: []corev1.Container{{
			Name: "main", Image: "registry.invalid/never-runs",
			Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{deviceplugin.ResourceName: resource.MustParse("1")}},
		}}},
	}
	if _, err := client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	bound := waitBound(ctx, t, client, "default", "inference")
	if bound.Spec.NodeName != nodeName {
		t.Fatalf("pod bound to %q; want %s", bound.Spec.NodeName, nodeName)
	}
	podUID := string(bound.UID)
	// The kubelet admits the pod: it allocates one healthy device.
	id := devs[0].GetID()
	res, err := dp.Client.Allocate(ctx, &dppb.AllocateRequest{ContainerRequests: []*dppb.ContainerAllocateRequest{{DevicesIds: []string{id}}}})
	if err != nil {
		t.Fatal(err)
	}
	ctr := kubelettest.FromAllocation(res.GetContainerResponses()[0])
	if len(ctr.Mounts) != 1 || !strings.HasPrefix(ctr.Env["GPUMESH_TARGET"], "unix://"+ctr.Mounts[0].ContainerPath+"/") {
		t.Fatalf("allocation %+v; want GPUMESH_TARGET inside the one mount", ctr)
	}
	socket := filepath.Join(ctr.Mounts[0].HostPath, kube.SocketName)
	// Until the kubelet's pod resources say which pod holds the device,
	// a connection is refused, not made as the node.
	if _, err := unixClient(t, socket).Devices(ctx); status.Code(err) != codes.Unavailable {
		t.Fatalf("a call through the tunnel of a device no pod holds = %v; want Unavailable (refused)", err)
	}
	// The kubelet records the allocation once Allocate returns.
	c.prs.Assign("default", "inference", "main", deviceplugin.ResourceName, id)

	var proc *proc
	if err := kubelettest.CanRun(); err == nil {
		py := kubetest.Python(t)
		cmd, err := ctr.Command(ctx, py, "-B", filepath.Join("testdata", "hold.py"), kubetest.PythonExamples(t))
		if err != nil {
			t.Fatal(err)
		}
		proc = start(t, cmd)
		proc.waitLine(ctx, t, "holding ")
		out := proc.output()
		t.Logf("the pod's process:\n%s", out)
		if !strings.Contains(out, "the host sees me as k8s:default/inference via "+nodeName) || !strings.Contains(out, "matrix_mul 8x8 ok") {
			t.Fatalf("the process did not run matrix_mul on gpu-host as k8s:default/inference via %s", nodeName)
		}
		if held := c.host.HeldBytes(ctx); held < 256<<10 {
			t.Fatalf("the host holds %d bytes; want the process's 256 KiB buffer", held)
		}
		c.checkAudit(ctx, t, "inference", podUID)
	} else {
		t.Logf("the pod's process cannot run here (%v); the pod's name is checked with a Go client", err)
		dres, err := unixClient(t, socket).Devices(ctx)
		if err != nil || dres.GetCaller() != "k8s:default/inference via "+nodeName {
			t.Fatalf("Devices through the tunnel = %v, %v; want the host to see k8s:default/inference via %s", dres, err, nodeName)
		}
	}

	// The pod goes: once the kubelet's pod resources no longer list it,
	// the agent releases it on the host, which frees its buffer (the
	// rule's idle timeout is an hour).
	deletePod(ctx, t, client, "default", "inference")
	c.prs.Forget("default", "inference")
	eventually(ctx, t, "the host to record the release of pod inference", func() (bool, error) {
		calls, _ := c.host.Calls()
		return slices.ContainsFunc(calls, func(r gpusvc.CallRecord) bool {
			return r.Method == "release" && r.Caller.Pod != nil && r.Caller.Pod.UID == podUID && r.Caller.Node == nodeName
		}), nil
	})
	if held := c.host.HeldBytes(ctx); held != 0 {
		t.Errorf("the host still holds %d bytes once the pod is gone; want its buffer freed", held)
	}
	if proc != nil {
		if err := proc.wait(ctx, t); err != nil {
			t.Fatalf("the process failed: %v\n%s", err, proc.output())
		}
		if !strings.Contains(proc.output(), "after: UNAVAILABLE") {
			t.Errorf("after its pod is gone the process could still call: %s", proc.output())
		}
	}

	// The kubelet restarts: the plugin registers again.
	c.dpk.Restart(t)
	reg, err = c.dpk.Registration(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lists, err = c.dpk.Connect(t, reg).Watch(wctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kubelettest.WaitDevices(ctx, lists, "the device after the kubelet restart", func(l []*dppb.Device) bool {
		return len(l) == 1 && l[0].GetHealth() == dppb.Healthy
	}); err != nil {
		t.Fatal(err)
	}

	// The GPU host leaves the tailnet: its device turns unhealthy, and the
	// DRA publisher withdraws its pool.
	c.host.Leave()
	if _, err := kubelettest.WaitDevices(ctx, lists, "gpu-host-gpu0 unhealthy", func(l []*dppb.Device) bool {
		return len(l) == 1 && l[0].GetHealth() == dppb.Unhealthy
	}); err != nil {
		t.Fatal(err)
	}
	eventually(ctx, t, "gpu-host's slice withdrawn", func() (bool, error) {
		l, err := client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		return !slices.ContainsFunc(l.Items, func(s resourceapi.ResourceSlice) bool { return s.Spec.Pool.Name == "gpu-host" }), nil
	})
}

// setExtended sets the node's gpumesh.dev/gpu capacity, as the kubelet
// does from the plugin's healthy devices.
func setExtended(ctx context.Context, t *testing.T, client kubernetes.Interface, n int) {
	t.Helper()
	q := resource.NewQuantity(int64(n), resource.DecimalSI).String()
	patch := `{"status":{"capacity":{"` + deviceplugin.ResourceName + `":"` + q + `"},"allocatable":{"` + deviceplugin.ResourceName + `":"` + q + `"}}}`
	if _, err := client.CoreV1().Nodes().Patch(ctx, nodeName, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}, "status"); err != nil {
		t.Fatal(err)
	}
}

func ptrTrue(b *bool) bool { return b != nil && *b }

func str(a resourceapi.DeviceAttribute) string {
	if a.StringValue == nil {
		return ""
	}
	return *a.StringValue
}

// claimFreed reports whether a claim no longer holds its device: it is
// gone, or deallocated and reserved for nobody.
func claimFreed(ctx context.Context, client kubernetes.Interface, name string) (bool, error) {
	cl, err := client.ResourceV1().ResourceClaims("default").Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return cl.Status.Allocation == nil && len(cl.Status.ReservedFor) == 0, nil
}

// testDoctor: where the agent runs, every Kubernetes check is ok (the
// kubelet socket, the device plugin serving and registered, the DRA
// plugin registered, the slices published, PodResources answering);
// where no agent or kubelet is, the checks say so and one fails.
func (c *cluster) testDoctor(ctx context.Context, t *testing.T) {
	// The kubelet reports the plugin's healthy devices in the Node's
	// status once it registered it.
	setExtended(ctx, t, c.cp.Client, 1)
	checks := agent.Doctor(ctx, agent.DoctorConfig{KubeletDir: c.dirs.kubelet, Client: c.cp.Client, NodeName: nodeName})
	var out strings.Builder
	diag.WriteChecks(&out, checks)
	t.Logf("doctor where the agent runs:\n%s", out.String())
	want := []string{"kubelet socket", "device plugin", "device plugin registered", "dra plugin", "resource slices", "pod resources"}
	var names []string
	for _, ch := range checks {
		names = append(names, ch.Name)
		if ch.Result != diag.OK {
			t.Errorf("check %s: %s (%s); want ok", ch.Name, ch.Result, ch.Detail)
		}
	}
	if !slices.Equal(names, want) {
		t.Errorf("checks %v; want %v", names, want)
	}
	if !strings.Contains(out.String(), "serves 1 devices, 1 healthy") || !strings.Contains(out.String(), "pools gpu-host") {
		t.Errorf("doctor does not report the device and the gpu-host pool:\n%s", out.String())
	}

	checks = agent.Doctor(ctx, agent.DoctorConfig{KubeletDir: t.TempDir(), ClientErr: errors.New("not in a pod")})
	out.Reset()
	diag.WriteChecks(&out, checks)
	t.Logf("doctor where nothing runs:\n%s", out.String())
	if !diag.Failed(checks) || checks[0].Name != "kubelet socket" || checks[0].Result != diag.Fail {
		t.Errorf("doctor without a kubelet: want the kubelet socket check failed")
	}
	if !strings.Contains(out.String(), "not in a pod") {
		t.Errorf("doctor does not say why it cannot reach the apiserver")
	}
}
