package deviceplugin_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/gpumesh/gpumesh/kube"
	"github.com/gpumesh/gpumesh/kube/deviceplugin"
	"github.com/gpumesh/gpumesh/kube/kubelettest"
	"github.com/gpumesh/gpumesh/kube/kubetest"
	"github.com/gpumesh/gpumesh/overlay"
)

// releases records Pods' releases and signals each.
type releases struct {
	mu   sync.Mutex
	got  []string // "HOST POD UID"
	next chan string
}

func (r *releases) release(_ context.Context, host string, pod *overlay.Pod) error {
	s := host + " " + pod.String() + " " + pod.UID
	r.mu.Lock()
	r.got = append(r.got, s)
	r.mu.Unlock()
	r.next <- s
	return nil
}

func (r *releases) wait(ctx context.Context, t *testing.T) string {
	t.Helper()
	select {
	case s := <-r.next:
		return s
	case <-ctx.Done():
		t.Fatalf("waiting for a release: %v", ctx.Err())
		return ""
	}
}

// TestPods names the pods behind device plugin tunnels from the test
// kubelet's PodResources service and a real apiserver: a device no pod
// holds, or one a pod of another node holds, names nobody; a held one
// names its pod with the API's service account and UID; a pod recreated
// under the same name releases the old one; a pod the kubelet forgets is
// released by Run.
func TestPods(t *testing.T) {
	cp := kubetest.Start(t, kubetest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	prs := kubelettest.StartPodResources(t, filepath.Join(t.TempDir(), "pod-resources", "kubelet.sock"))
	rel := &releases{next: make(chan string, 16)}
	pods, err := deviceplugin.NewPods(deviceplugin.PodsConfig{
		Client: cp.Client, NodeName: "node-a", Socket: prs.Socket, Release: rel.release,
		Interval: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer pods.Close()
	mkPod := func(name, node, sa string) *corev1.Pod {
		t.Helper()
		p, err := cp.Client.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
			Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: sa, Containers: []corev1.Container{{
				Name: "main", Image: "registry.invalid/never-runs",
			}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	spec := func(device string) kube.TunnelSpec {
		return kube.TunnelSpec{ID: kube.TunnelID("d-", device), Host: "gpu-a", Device: device}
	}

	if _, err := pods.PodOf(ctx, spec("gpu-a-gpu0")); err == nil || !strings.Contains(err.Error(), "no pod holds device gpu-a-gpu0") {
		t.Fatalf("naming a device no pod holds: %v; want an error saying so", err)
	}
	mkPod("elsewhere", "node-b", "")
	prs.Assign("default", "elsewhere", "main", deviceplugin.ResourceName, "gpu-a-gpu1")
	if _, err := pods.PodOf(ctx, spec("gpu-a-gpu1")); err == nil || !strings.Contains(err.Error(), "bound to node") {
		t.Fatalf("naming another node's pod: %v; want an error", err)
	}
	// Another resource's devices are not gpumesh's.
	prs.Assign("default", "elsewhere", "main", "nvidia.com/gpu", "gpu-a-gpu0")
	if _, err := pods.PodOf(ctx, spec("gpu-a-gpu0")); err == nil {
		t.Fatal("a device of another resource named a pod")
	}

	first := mkPod("infer", "node-a", "")
	prs.Assign("default", "infer", "main", deviceplugin.ResourceName, "gpu-a-gpu0")
	rctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		pods.Run(rctx)
	}()
	defer func() {
		stop()
		wg.Wait()
	}()
	got, err := pods.PodOf(ctx, spec("gpu-a-gpu0"))
	if err != nil {
		t.Fatal(err)
	}
	want := overlay.Pod{Namespace: "default", ServiceAccount: "default", Name: "infer", UID: string(first.UID), Allocation: spec("gpu-a-gpu0").ID}
	if *got != want {
		t.Fatalf("named %+v; want %+v", *got, want)
	}

	// The pod is replaced by one of the same name (another UID, another
	// service account) before a poll sees it go: naming the new one
	// releases the old.
	if err := cp.Client.CoreV1().Pods("default").Delete(ctx, "infer", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
	cp.Client.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "trainer"}}, metav1.CreateOptions{})
	second := mkPod("infer", "node-a", "trainer")
	got, err = pods.PodOf(ctx, spec("gpu-a-gpu0"))
	if err != nil {
		t.Fatal(err)
	}
	if got.UID != string(second.UID) || got.ServiceAccount != "trainer" {
		t.Fatalf("named %+v; want the new pod %s of service account trainer", *got, second.UID)
	}
	if r := rel.wait(ctx, t); r != "gpu-a k8s:default/infer "+string(first.UID) {
		t.Fatalf("released %q; want the first pod on gpu-a", r)
	}

	// The kubelet forgets the pod: Run releases it.
	prs.Forget("default", "infer")
	if r := rel.wait(ctx, t); r != "gpu-a k8s:default/infer "+string(second.UID) {
		t.Fatalf("released %q; want the second pod on gpu-a", r)
	}
	if n := pods.Named(); len(n) != 0 {
		t.Errorf("still named: %+v", n)
	}
}

// TestPodsSurviveRestart: the pods an agent named are kept in its state
// file; after a restart, one that went while the agent was down is
// released by the first check, one that still holds its device is kept,
// and a state file that cannot be read costs nothing but that.
func TestPodsSurviveRestart(t *testing.T) {
	cp := kubetest.Start(t, kubetest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	prs := kubelettest.StartPodResources(t, filepath.Join(t.TempDir(), "pod-resources", "kubelet.sock"))
	state := filepath.Join(t.TempDir(), "named-pods.json")
	rel := &releases{next: make(chan string, 16)}
	start := func() *deviceplugin.Pods {
		t.Helper()
		pods, err := deviceplugin.NewPods(deviceplugin.PodsConfig{
			Client: cp.Client, NodeName: "node-a", Socket: prs.Socket, Release: rel.release,
			Interval: 50 * time.Millisecond, StateFile: state,
		})
		if err != nil {
			t.Fatal(err)
		}
		return pods
	}
	uids := map[string]string{}
	for i, name := range []string{"keep", "lost"} {
		p, err := cp.Client.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
			Spec: corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{
				Name: "main", Image: "registry.invalid/never-runs",
			}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		uids[name] = string(p.UID)
		prs.Assign("default", name, "main", deviceplugin.ResourceName, fmt.Sprintf("gpu-a-gpu%d", i))
	}
	spec := func(device string) kube.TunnelSpec {
		return kube.TunnelSpec{ID: kube.TunnelID("d-", device), Host: "gpu-a", Device: device}
	}

	before := start()
	for _, d := range []string{"gpu-a-gpu0", "gpu-a-gpu1"} {
		if _, err := before.PodOf(ctx, spec(d)); err != nil {
			t.Fatal(err)
		}
	}
	before.Close() // the agent stops; lost goes while it is down
	prs.Forget("default", "lost")

	after := start()
	defer after.Close()
	if n := after.Named(); len(n) != 2 {
		t.Fatalf("after the restart the agent knows %+v; want both pods named before", n)
	}
	rctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { after.Run(rctx) })
	defer func() {
		stop()
		wg.Wait()
	}()
	if r := rel.wait(ctx, t); r != "gpu-a k8s:default/lost "+uids["lost"] {
		t.Fatalf("released %q; want the pod that went while the agent was down", r)
	}
	if n := after.Named(); len(n) != 1 || n[0].UID != uids["keep"] {
		t.Errorf("still named: %+v; want only keep", n)
	}

	// A state file that cannot be read: the agent starts knowing nothing.
	if err := os.WriteFile(state, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	broken := start()
	defer broken.Close()
	if n := broken.Named(); len(n) != 0 {
		t.Errorf("from a broken state file the agent knows %+v; want nothing", n)
	}
}
