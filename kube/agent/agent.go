// Package agent wires gpumesh's Kubernetes node agent together: the GPU
// hosts (kube.Hosts), the node's tunnels (kube.Tunnels), the device plugin
// (kube/deviceplugin) and the DRA driver (kube/dra: the publisher, elected
// among the agents, and the kubelet plugin). It holds no logic of its own.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/gpumesh/gpumesh/kube"
	"github.com/gpumesh/gpumesh/kube/deviceplugin"
	"github.com/gpumesh/gpumesh/kube/dra"
	"github.com/gpumesh/gpumesh/overlay"
)

// DefaultTunnelDir is where the DaemonSet keeps the tunnels (a hostPath,
// the same path inside the agent's container and on the node).
const DefaultTunnelDir = "/var/lib/gpumesh/tunnels"

// podStateName is the file in the tunnel directory that keeps the device
// plugin's named pods across restarts.
const podStateName = "named-pods.json"

// Config configures an Agent.
type Config struct {
	// Overlay is the node's tailnet connection, up. Required unless Hosts
	// is set.
	Overlay overlay.Overlay
	// Hosts is where the GPU hosts come from; nil means StaticHosts over
	// HostNames and the peers HostTarget finds in the overlay's peer list
	// ("tag:gpu", as a pool target), probed through Overlay every
	// ProbeInterval.
	Hosts         kube.Hosts
	HostNames     []string
	HostTarget    string
	ProbeInterval time.Duration
	// NodeName is the Kubernetes node the agent serves. Required with DRA.
	NodeName string
	// Client reaches the apiserver. Required with DRA.
	Client kubernetes.Interface
	// TunnelDir holds the tunnels; empty means DefaultTunnelDir.
	// ContainerDir is where a tunnel appears in its container; empty
	// means kube.DefaultContainerDir.
	TunnelDir    string
	ContainerDir string
	// NamePods makes the agent name each connection's pod to the GPU
	// hosts (gpusvc/preface): a prepared claim's pod, read from the
	// Kubernetes API; for a device plugin tunnel, the pod the kubelet's
	// PodResources API (PodResourcesSocket; empty: the kubelet's) says
	// holds the device, looked up as each connection arrives (none: the
	// connection is refused); the agent itself for its probes.
	// Unpreparing a claim releases its pod on the host at once; a device
	// plugin pod is released once it no longer holds its device (polled
	// every PodPollInterval; 0: 2s). The hosts' policies must trust the
	// agent (their kubernetes block). With the device plugin it needs
	// Client and NodeName.
	NamePods           bool
	PodResourcesSocket string
	PodPollInterval    time.Duration

	// DevicePlugin offers the GPUs as gpumesh.dev/gpu, each as Slots
	// devices, registering in DevicePluginDir (empty: the kubelet's).
	DevicePlugin    bool
	Slots           int
	DevicePluginDir string

	// DRA runs the kubelet plugin (with RegistrarDir, PluginDir, CDIDir;
	// empty: the defaults), and Publish campaigns to publish the
	// ResourceSlices (Lease in Namespace; slices for NodeSelector's nodes,
	// or all nodes when nil).
	DRA                       bool
	RegistrarDir, PluginDir   string
	CDIDir                    string
	Publish                   bool
	Namespace                 string
	NodeSelector              *corev1.NodeSelector
	LeaseDuration, LeaseRenew time.Duration
	LeaseRetry                time.Duration
	Logger                    *slog.Logger
}

// Agent is a running node agent.
type Agent struct {
	hosts     kube.Hosts
	ownHosts  *kube.StaticHosts // closed by the agent; nil when Hosts was given
	tunnels   *kube.Tunnels
	pods      *deviceplugin.Pods // names device plugin pods; nil unless NamePods
	devPlugin *deviceplugin.Plugin
	draPlugin *dra.Plugin
	publisher *dra.Publisher
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	errs      chan error // the background parts' failures
	mu        sync.Mutex
	closed    bool // guarded by mu
}

// Start starts the agent's parts; a half-built start is undone.
func Start(ctx context.Context, cfg Config) (_ *Agent, err error) {
	if !cfg.DevicePlugin && !cfg.DRA {
		return nil, errors.New("agent: neither the device plugin nor DRA is on")
	}
	if cfg.DRA && (cfg.Client == nil || cfg.NodeName == "") {
		return nil, errors.New("agent: DRA needs a Kubernetes client and the node's name")
	}
	if cfg.DevicePlugin && cfg.NamePods && (cfg.Client == nil || cfg.NodeName == "") {
		return nil, errors.New("agent: naming the device plugin's pods needs a Kubernetes client and the node's name")
	}
	if cfg.Publish && cfg.Namespace == "" {
		return nil, errors.New("agent: publishing needs a namespace for its Lease")
	}
	if cfg.TunnelDir == "" {
		cfg.TunnelDir = DefaultTunnelDir
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Agent{hosts: cfg.Hosts, errs: make(chan error, 2)}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	if a.hosts == nil {
		if cfg.Overlay == nil {
			return nil, errors.New("agent: no overlay to reach the GPU hosts")
		}
		a.ownHosts, err = kube.StartStatic(ctx, kube.StaticConfig{Names: cfg.HostNames, Target: cfg.HostTarget, Overlay: cfg.Overlay, Interval: cfg.ProbeInterval, NamePods: cfg.NamePods, Logger: log})
		if err != nil {
			return nil, err
		}
		a.hosts = a.ownHosts
	}
	tcfg := kube.TunnelConfig{Dir: cfg.TunnelDir, ContainerDir: cfg.ContainerDir, Dial: a.hosts.Dial, NamePods: cfg.NamePods, Logger: log}
	if cfg.DevicePlugin && cfg.NamePods {
		a.pods, err = deviceplugin.NewPods(deviceplugin.PodsConfig{
			Client: cfg.Client, NodeName: cfg.NodeName, Socket: cfg.PodResourcesSocket, Interval: cfg.PodPollInterval,
			Release: func(ctx context.Context, host string, pod *overlay.Pod) error {
				return a.tunnels.Release(ctx, host, pod)
			},
			// Beside the tunnels, on the node: a restarted agent releases
			// the pods that went while it was down.
			StateFile: filepath.Join(cfg.TunnelDir, podStateName),
			Logger:    log,
		})
		if err != nil {
			return nil, err
		}
		tcfg.PodOf = a.pods.PodOf
	}
	a.tunnels, err = kube.OpenTunnels(tcfg)
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	a.cancel = cancel
	if cfg.DevicePlugin {
		a.devPlugin, err = deviceplugin.New(deviceplugin.Config{Hosts: a.hosts, Tunnels: a.tunnels, Pods: a.pods, Slots: cfg.Slots, Dir: cfg.DevicePluginDir, Logger: log})
		if err != nil {
			return nil, err
		}
		a.run(func() error { return a.devPlugin.Run(rctx) })
	}
	if cfg.DRA {
		a.draPlugin, err = dra.StartPlugin(ctx, dra.PluginConfig{
			Client: cfg.Client, Hosts: a.hosts, Tunnels: a.tunnels, NamePods: cfg.NamePods,
			RegistrarDir: cfg.RegistrarDir, PluginDir: cfg.PluginDir, CDIDir: cfg.CDIDir, Logger: log,
		})
		if err != nil {
			return nil, err
		}
		if cfg.Publish {
			a.publisher, err = dra.NewPublisher(dra.PublisherConfig{
				Client: cfg.Client, Hosts: a.hosts, NodeSelector: cfg.NodeSelector,
				Namespace: cfg.Namespace, Identity: cfg.NodeName,
				LeaseDuration: cfg.LeaseDuration, RenewDeadline: cfg.LeaseRenew, RetryPeriod: cfg.LeaseRetry,
				Logger: log,
			})
			if err != nil {
				return nil, err
			}
			a.run(func() error { return a.publisher.Run(rctx) })
		}
	}
	return a, nil
}

// run runs f in a goroutine the agent owns, reporting its failure on Err.
func (a *Agent) run(f func() error) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := f(); err != nil {
			a.errs <- err
		}
	}()
}

// Err receives the failure of a part that stopped on its own (the device
// plugin cannot listen, the election cannot start).
func (a *Agent) Err() <-chan error { return a.errs }

// Hosts returns the agent's GPU hosts.
func (a *Agent) Hosts() kube.Hosts { return a.hosts }

// Tunnels returns the node's tunnels.
func (a *Agent) Tunnels() *kube.Tunnels { return a.tunnels }

// Status is what the agent can say about itself.
type Status struct {
	Hosts []kube.Host
	// DevicePlugin is the device plugin's registration, when it runs.
	DevicePlugin *deviceplugin.Status
	// DRARegistered says whether the kubelet accepted the DRA plugin;
	// Publishing whether this agent publishes the ResourceSlices.
	DRARegistered, Publishing bool
	Tunnels                   []kube.TunnelSpec
}

// Status returns the agent's state now.
func (a *Agent) Status() Status {
	hosts, _ := a.hosts.Snapshot()
	st := Status{Hosts: hosts, Tunnels: a.tunnels.List()}
	if a.devPlugin != nil {
		s := a.devPlugin.Status()
		st.DevicePlugin = &s
	}
	if a.draPlugin != nil {
		st.DRARegistered = a.draPlugin.Registered()
	}
	if a.publisher != nil {
		st.Publishing = a.publisher.Leading()
	}
	return st
}

// Close stops every part, giving up the publishing Lease, and stops
// serving the tunnels, which stay on disk for the next agent (the pods
// still run). A second Close returns net.ErrClosed.
func (a *Agent) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return net.ErrClosed
	}
	a.closed = true
	a.mu.Unlock()
	if a.cancel != nil {
		a.cancel()
	}
	a.wg.Wait()
	var errs []error
	if a.draPlugin != nil {
		errs = append(errs, a.draPlugin.Close())
	}
	if a.tunnels != nil {
		errs = append(errs, a.tunnels.Close())
	}
	if a.pods != nil {
		errs = append(errs, a.pods.Close())
	}
	if a.ownHosts != nil {
		errs = append(errs, a.ownHosts.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("agent: close: %w", err)
	}
	return nil
}
