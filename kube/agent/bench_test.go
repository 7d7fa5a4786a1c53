package agent_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"

	k8sdeploy "github.com/gpumesh/gpumesh/deploy/kubernetes"
	"github.com/gpumesh/gpumesh/kube/dra"
	"github.com/gpumesh/gpumesh/kube/kubelettest"
	"github.com/gpumesh/gpumesh/kube/kubetest"
)

// BenchmarkPodToPreparedClaim measures, per pod, the time from creating a
// pod whose claim comes from a template to the agent having prepared that
// claim for the test kubelet, against the time to the pod's binding in the
// same cycle (the control plane's own part: claim creation, scheduling,
// binding); x-bound is the ratio of the medians. Each cycle deletes the
// pod and unprepares the claim, and waits for the claim to be deallocated,
// so that the GPU is free again.
func BenchmarkPodToPreparedClaim(b *testing.B) {
	cp := kubetest.Start(b, kubetest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	if _, err := applyYAML(ctx, cp, k8sdeploy.Install, false); err != nil {
		b.Fatal(err)
	}
	c := startCluster(ctx, b, cp)
	defer func() {
		if err := c.agent.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			b.Error(err)
		}
	}()
	client := cp.Client
	tmpl := &resourceapi.ResourceClaimTemplate{
		ObjectMeta: metav1.ObjectMeta{Name: "any-gpu", Namespace: "default"},
		Spec: resourceapi.ResourceClaimTemplateSpec{Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{
			Requests: []resourceapi.DeviceRequest{{Name: "gpu", Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: dra.DeviceClassName}}},
		}}},
	}
	if _, err := client.ResourceV1().ResourceClaimTemplates("default").Create(ctx, tmpl, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	eventually(ctx, b, "the gpu-host ResourceSlice", func() (bool, error) {
		l, err := client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
		return err == nil && len(l.Items) > 0, err
	})
	plugin, err := (&kubelettest.DRAKubelet{RegistryDir: c.dirs.registry}).WaitPlugin(ctx, b, dra.DriverName)
	if err != nil {
		b.Fatal(err)
	}

	var toBound, toPrepared []time.Duration
	i := 0
	for b.Loop() {
		i++
		name := fmt.Sprintf("bench-%d", i)
		bound, prepared := cycle(ctx, b, c, plugin, name)
		toBound = append(toBound, bound)
		toPrepared = append(toPrepared, prepared)
	}
	slices.Sort(toBound)
	slices.Sort(toPrepared)
	bo, pr := toBound[len(toBound)/2], toPrepared[len(toPrepared)/2]
	b.ReportMetric(float64(bo.Milliseconds()), "bound-p50-ms")
	b.ReportMetric(float64(pr.Milliseconds()), "prepared-p50-ms")
	b.ReportMetric(float64(pr)/float64(bo), "x-bound")
}

// cycle creates a pod, waits (on a watch) for its binding and its claim,
// prepares the claim, then cleans up; it returns the times from creation
// to binding and to the prepared claim.
func cycle(ctx context.Context, b *testing.B, c *cluster, plugin *kubelettest.DRAPlugin, name string) (bound, prepared time.Duration) {
	client := c.cp.Client
	w, err := client.CoreV1().Pods("default").Watch(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String()})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Stop()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PodSpec{
			ResourceClaims: []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimTemplateName: ptr.To("any-gpu")}},
			Containers: []corev1.Container{{
				Name: "main", Image: "registry.invalid/never-runs",
				Resources: corev1.ResourceRequirements{Claims: []corev1.ResourceClaim{{Name: "gpu"}}},
			}},
		},
	}
	t0 := time.Now()
	if _, err := client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	// The kubelet acts once the pod is bound to its node and its claim is
	// named in its status.
	var claimName string
	for claimName == "" || bound == 0 {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				b.Fatal("the pod watch ended")
			}
			p, isPod := ev.Object.(*corev1.Pod)
			if !isPod || ev.Type == watch.Deleted {
				continue
			}
			if p.Spec.NodeName != "" && bound == 0 {
				bound = time.Since(t0)
			}
			for _, s := range p.Status.ResourceClaimStatuses {
				if s.ResourceClaimName != nil {
					claimName = *s.ResourceClaimName
				}
			}
		case <-ctx.Done():
			b.Fatalf("pod %s: %v", name, ctx.Err())
		}
	}
	claim, err := client.ResourceV1().ResourceClaims("default").Get(ctx, claimName, metav1.GetOptions{})
	if err != nil {
		b.Fatal(err)
	}
	kc := kubelettest.Claim{Namespace: "default", Name: claimName, UID: claim.UID}
	if _, err := plugin.Prepare(ctx, kc); err != nil {
		b.Fatal(err)
	}
	prepared = time.Since(t0)

	b.StopTimer()
	defer b.StartTimer()
	deletePod(ctx, b, client, "default", name)
	if err := plugin.Unprepare(ctx, kc); err != nil {
		b.Fatal(err)
	}
	eventually(ctx, b, "claim "+claimName+" deallocated", func() (bool, error) {
		return claimFreed(ctx, client, claimName)
	})
	return bound, prepared
}
