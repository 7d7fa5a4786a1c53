package dra

import (
	"context"
	"fmt"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gpumesh/gpumesh/gpusvc/preface"
	"github.com/gpumesh/gpumesh/overlay"
)

// maxConsumers bounds how many pods of a shared claim are looked up.
const maxConsumers = 32

// podOf names, from the Kubernetes API, the pod a claim's tunnels serve:
// the pods in its status.reservedFor (the scheduler writes them; a pod
// cannot), each read back so that its service account is the API's. A
// claim one pod holds is that pod (its namespace, service account, name
// and UID); a claim several pods share is named by the claim's UID, with
// no pod name, and its pods must share a service account, or the claim is
// not prepared: the host could not tell them apart.
//
// Without NamePods it names nothing: the tunnels are the agent's own.
func (p *Plugin) podOf(ctx context.Context, c *resourceapi.ResourceClaim) (*overlay.Pod, error) {
	if !p.cfg.NamePods {
		return nil, nil
	}
	var pods []*overlay.Pod
	for _, ref := range c.Status.ReservedFor {
		if ref.APIGroup != "" || ref.Resource != "pods" {
			continue
		}
		if len(pods) == maxConsumers {
			return nil, fmt.Errorf("dra: claim %s/%s is reserved for more than %d pods", c.Namespace, c.Name, maxConsumers)
		}
		pod, err := p.cfg.Client.CoreV1().Pods(c.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("dra: claim %s/%s: pod %s: %w", c.Namespace, c.Name, ref.Name, err)
		}
		if pod.UID != ref.UID {
			return nil, fmt.Errorf("dra: claim %s/%s: pod %s is not the one it is reserved for (UID %s, not %s)", c.Namespace, c.Name, ref.Name, pod.UID, ref.UID)
		}
		sa := pod.Spec.ServiceAccountName
		if sa == "" {
			sa = "default"
		}
		pods = append(pods, &overlay.Pod{Namespace: pod.Namespace, ServiceAccount: sa, Name: pod.Name, UID: string(pod.UID)})
	}
	var named *overlay.Pod
	switch len(pods) {
	case 0:
		return nil, fmt.Errorf("dra: claim %s/%s is reserved for no pod", c.Namespace, c.Name)
	case 1:
		named = pods[0]
	default:
		named = &overlay.Pod{Namespace: c.Namespace, ServiceAccount: pods[0].ServiceAccount, UID: string(c.UID)}
		for _, o := range pods[1:] {
			if o.ServiceAccount != named.ServiceAccount {
				return nil, fmt.Errorf("dra: claim %s/%s is shared by pods of service accounts %s and %s: the GPU host could not tell them apart", c.Namespace, c.Name, named.ServiceAccount, o.ServiceAccount)
			}
		}
	}
	named.Allocation = string(c.UID)
	if err := (preface.Preface{Op: preface.Connect, Pod: named}).Validate(); err != nil {
		return nil, fmt.Errorf("dra: claim %s/%s: %w", c.Namespace, c.Name, err)
	}
	return named, nil
}
