package deviceplugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	prpb "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/gpumesh/gpumesh/gpusvc/preface"
	"github.com/gpumesh/gpumesh/kube"
	"github.com/gpumesh/gpumesh/overlay"
)

// DefaultPodResourcesSocket is the kubelet's PodResources socket.
const DefaultPodResourcesSocket = "/var/lib/kubelet/pod-resources/kubelet.sock"

// Bounds on what the kubelet and the agent's callers can make Pods hold.
const (
	// maxDevices bounds the device-to-pod map one List fills.
	maxDevices = 4096
	// maxNamed bounds the pods named to the hosts and not yet released.
	maxNamed = 1024
	// maxListBytes bounds one List answer.
	maxListBytes = 16 << 20
	// maxStateBytes bounds the state file read at start.
	maxStateBytes = 4 << 20
)

// PodsConfig configures Pods.
type PodsConfig struct {
	// Client reads a pod's service account and UID. Required.
	Client kubernetes.Interface
	// NodeName is the agent's node: a pod bound elsewhere is not named.
	// Required.
	NodeName string
	// Socket is the kubelet's PodResources socket; empty means
	// DefaultPodResourcesSocket.
	Socket string
	// Release asks a host to release a pod that is gone (Tunnels.Release).
	// Required.
	Release func(ctx context.Context, host string, pod *overlay.Pod) error
	// Interval is how often the kubelet is asked whether the named pods
	// still hold their devices, and how long one answer is reused to name
	// connections; 0 means 2s.
	Interval time.Duration
	// StateFile, if set, keeps the named pods and their hosts across
	// restarts of the agent: a pod that went while the agent was down is
	// released by the first check after it starts, not left to the
	// host's idle timeout.
	StateFile string
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
}

// Pods names the pod behind each connection to a device plugin tunnel.
// The kubelet does not tell a device plugin which pod an allocation is
// for; its PodResources API (k8s.io/kubelet/pkg/apis/podresources/v1)
// says which pod's containers hold which devices of each resource. Pods
// asks it (List, its answer reused for Interval), reads the pod from the
// API server for its service account and UID, and remembers the pods it
// named; once a pod no longer holds its devices (Run polls; an Allocate
// asks at once, through Sweep), it releases the pod on the hosts its
// connections went to, freeing its sessions and buffers there.
type Pods struct {
	cfg  PodsConfig
	log  *slog.Logger
	conn *grpc.ClientConn
	pr   prpb.PodResourcesListerClient
	wake chan struct{} // Sweep's nudge to Run

	saveMu sync.Mutex // one write of the state file at a time

	mu     sync.Mutex
	owners map[string]podRef // device ID → its pod, from the last List; guarded by mu
	listed time.Time         // when owners was filled; guarded by mu
	named  map[string]*named // by pod UID; guarded by mu
	closed bool              // guarded by mu
}

// podRef is a pod as PodResources names it.
type podRef struct{ namespace, name string }

// named is a pod named to hosts, and those hosts.
type named struct {
	pod   overlay.Pod
	hosts []string
	at    time.Time // when it was last named
}

// NewPods validates cfg. Run polls the kubelet; Close closes the
// connection to it.
func NewPods(cfg PodsConfig) (*Pods, error) {
	if cfg.Client == nil || cfg.NodeName == "" || cfg.Release == nil {
		return nil, errors.New("deviceplugin: naming pods needs a Kubernetes client, the node's name and a release function")
	}
	if cfg.Socket == "" {
		cfg.Socket = DefaultPodResourcesSocket
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 2 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	conn, err := grpc.NewClient("unix://"+cfg.Socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxListBytes)))
	if err != nil {
		return nil, fmt.Errorf("deviceplugin: pod resources %s: %w", cfg.Socket, err)
	}
	p := &Pods{
		cfg: cfg, log: log, conn: conn, pr: prpb.NewPodResourcesListerClient(conn),
		wake: make(chan struct{}, 1), named: make(map[string]*named),
	}
	if cfg.StateFile != "" {
		// A state file that cannot be read loses only the early release
		// of pods named before: the hosts free them when they go idle.
		if err := p.load(); err != nil {
			log.Warn("deviceplugin: the pods named before this start are not known; the GPU hosts free those that are gone when their sessions go idle", "err", err)
		}
	}
	return p, nil
}

// Close closes the connection to the kubelet. A second Close returns
// net.ErrClosed.
func (p *Pods) Close() error {
	p.mu.Lock()
	closed := p.closed
	p.closed = true
	p.mu.Unlock()
	if closed {
		return net.ErrClosed
	}
	return p.conn.Close()
}

// list asks the kubelet which pod holds each gpumesh.dev/gpu device.
func (p *Pods) list(ctx context.Context) (map[string]podRef, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	res, err := p.pr.List(ctx, &prpb.ListPodResourcesRequest{})
	if err != nil {
		return nil, fmt.Errorf("deviceplugin: the kubelet's pod resources (%s): %w", p.cfg.Socket, err)
	}
	owners := make(map[string]podRef)
	for _, pr := range res.GetPodResources() {
		for _, c := range pr.GetContainers() {
			for _, d := range c.GetDevices() {
				if d.GetResourceName() != ResourceName {
					continue
				}
				for _, id := range d.GetDeviceIds() {
					if len(owners) == maxDevices {
						return nil, fmt.Errorf("deviceplugin: the kubelet lists more than %d %s devices", maxDevices, ResourceName)
					}
					owners[id] = podRef{namespace: pr.GetNamespace(), name: pr.GetName()}
				}
			}
		}
	}
	p.mu.Lock()
	p.owners, p.listed = owners, time.Now()
	p.mu.Unlock()
	return owners, nil
}

// owner is the pod holding device, from a List at most Interval old.
func (p *Pods) owner(ctx context.Context, device string) (podRef, bool, error) {
	p.mu.Lock()
	owners, fresh := p.owners, time.Since(p.listed) < p.cfg.Interval
	p.mu.Unlock()
	if ref, ok := owners[device]; ok && fresh {
		return ref, true, nil
	}
	owners, err := p.list(ctx)
	if err != nil {
		return podRef{}, false, err
	}
	ref, ok := owners[device]
	return ref, ok, nil
}

// PodOf implements kube.TunnelConfig.PodOf: the pod that holds the
// tunnel's device, as the API server names it. No pod holding it (yet),
// or one that is not on this node, is an error: the connection is
// refused rather than made as the node.
func (p *Pods) PodOf(ctx context.Context, spec kube.TunnelSpec) (*overlay.Pod, error) {
	ref, ok, err := p.owner(ctx, spec.Device)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("deviceplugin: no pod holds device %s (the kubelet's pod resources say)", spec.Device)
	}
	pod, err := p.cfg.Client.CoreV1().Pods(ref.namespace).Get(ctx, ref.name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("deviceplugin: device %s: pod %s/%s: %w", spec.Device, ref.namespace, ref.name, err)
	}
	if pod.Spec.NodeName != p.cfg.NodeName {
		return nil, fmt.Errorf("deviceplugin: device %s: pod %s/%s is bound to node %q, not %s", spec.Device, ref.namespace, ref.name, pod.Spec.NodeName, p.cfg.NodeName)
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	named := &overlay.Pod{Namespace: pod.Namespace, ServiceAccount: sa, Name: pod.Name, UID: string(pod.UID), Allocation: spec.ID}
	if err := (preface.Preface{Op: preface.Connect, Pod: named}).Validate(); err != nil {
		return nil, fmt.Errorf("deviceplugin: device %s: %w", spec.Device, err)
	}
	if err := p.remember(ctx, *named, spec.Host); err != nil {
		return nil, err
	}
	return named, nil
}

// remember records that pod was named to host. A pod of the same name
// with another UID is one that is gone: it is released first.
func (p *Pods) remember(ctx context.Context, pod overlay.Pod, host string) error {
	var gone []*named
	p.mu.Lock()
	for uid, n := range p.named {
		if uid != pod.UID && n.pod.Namespace == pod.Namespace && n.pod.Name == pod.Name {
			gone = append(gone, n)
			delete(p.named, uid)
		}
	}
	n, ok := p.named[pod.UID]
	if !ok && len(p.named) >= maxNamed {
		p.mu.Unlock()
		if len(gone) > 0 {
			p.save()
		}
		p.release(ctx, gone)
		return fmt.Errorf("deviceplugin: more than %d pods named and not released", maxNamed)
	}
	if !ok {
		n = &named{pod: pod}
		p.named[pod.UID] = n
	}
	n.at = time.Now()
	changed := !ok || len(gone) > 0
	if !slices.Contains(n.hosts, host) {
		n.hosts = append(n.hosts, host)
		changed = true
	}
	p.mu.Unlock()
	if changed {
		p.save()
	}
	p.release(ctx, gone)
	return nil
}

// release releases each gone pod on the hosts it was named to.
func (p *Pods) release(ctx context.Context, gone []*named) {
	for _, n := range gone {
		for _, h := range n.hosts {
			if err := p.cfg.Release(ctx, h, &n.pod); err != nil {
				p.log.Warn("deviceplugin: the GPU host did not release a pod that is gone; it frees the pod's sessions when they go idle", "pod", n.pod.String(), "host", h, "err", err)
				continue
			}
			p.log.Info("deviceplugin: released a pod that no longer holds its devices", "pod", n.pod.String(), "uid", n.pod.UID, "host", h)
		}
	}
}

// Sweep asks Run to check the named pods now, and the next connection
// to ask the kubelet afresh: an allocation changed which pod holds a
// device.
func (p *Pods) Sweep() {
	p.mu.Lock()
	p.listed = time.Time{}
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Run checks every Interval, or when Sweep asks, whether the named pods
// still hold devices, and releases those that do not, until ctx ends.
func (p *Pods) Run(ctx context.Context) {
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-p.wake:
		}
		p.sweep(ctx)
	}
}

func (p *Pods) sweep(ctx context.Context) {
	p.mu.Lock()
	empty := len(p.named) == 0
	p.mu.Unlock()
	if empty {
		return
	}
	// A pod named after the List began may be missing from it.
	start := time.Now()
	owners, err := p.list(ctx)
	if err != nil {
		p.log.Warn("deviceplugin: cannot tell whether pods still hold their devices", "err", err)
		return
	}
	holding := make(map[podRef]bool)
	for _, ref := range owners {
		holding[ref] = true
	}
	var gone []*named
	p.mu.Lock()
	for uid, n := range p.named {
		if !holding[podRef{namespace: n.pod.Namespace, name: n.pod.Name}] && n.at.Before(start) {
			gone = append(gone, n)
			delete(p.named, uid)
		}
	}
	p.mu.Unlock()
	if len(gone) > 0 {
		p.save()
	}
	p.release(ctx, gone)
}

// Named returns the pods named to hosts and not yet released.
func (p *Pods) Named() []overlay.Pod {
	p.mu.Lock()
	defer p.mu.Unlock()
	var pods []overlay.Pod
	for _, n := range p.named {
		pods = append(pods, n.pod)
	}
	slices.SortFunc(pods, func(a, b overlay.Pod) int { return strings.Compare(a.UID, b.UID) })
	return pods
}
