package dra

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"

	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpumesh/gpumesh/kube"
)

// CDIKind is the kind of the CDI devices the plugin writes: their IDs are
// "gpumesh.dev/gpu=<claim UID>-<n>".
const CDIKind = "gpumesh.dev/gpu"

// Default kubelet and runtime paths.
const (
	DefaultRegistrarDir = kubeletplugin.KubeletRegistryDir
	DefaultPluginDir    = kubeletplugin.KubeletPluginsDir + "/" + DriverName
	DefaultCDIDir       = "/var/run/cdi"
)

// PluginConfig configures the kubelet plugin.
type PluginConfig struct {
	// Client reaches the apiserver (the plugin reads the claims it
	// prepares). Required.
	Client kubernetes.Interface
	// Hosts are the GPU hosts; a claim allocated from a host that is not
	// among them is not prepared. Required.
	Hosts kube.Hosts
	// Tunnels serves the prepared devices. Required.
	Tunnels *kube.Tunnels
	// NamePods: each claim's tunnels name its pod to the GPU host (the
	// Tunnels' NamePods must be on too); the plugin reads the pods a claim
	// is reserved for (pods.go).
	NamePods bool
	// RegistrarDir is where the kubelet looks for plugins' registration
	// sockets; empty means /var/lib/kubelet/plugins_registry.
	RegistrarDir string
	// PluginDir holds the plugin's DRA socket; empty means
	// /var/lib/kubelet/plugins/gpu.gpumesh.dev.
	PluginDir string
	// CDIDir is where the container runtime reads CDI specs; empty means
	// /var/run/cdi.
	CDIDir string
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
}

// Plugin is the DRA kubelet plugin: it serves the kubelet's registration
// and DRA gRPC services (through k8s.io/dynamic-resource-allocation's
// kubeletplugin helper, both v1 and v1beta1 of the DRA API) and prepares
// claims.
type Plugin struct {
	cfg    PluginConfig
	log    *slog.Logger
	helper *kubeletplugin.Helper

	mu         sync.Mutex
	closed     bool // guarded by mu
	registered bool // the kubelet's last NotifyRegistrationStatus said so; guarded by mu
}

var _ kubeletplugin.DRAPlugin = (*Plugin)(nil)

// StartPlugin makes the plugin's directories and serves it; the kubelet
// finds it by its registration socket.
func StartPlugin(ctx context.Context, cfg PluginConfig) (*Plugin, error) {
	if cfg.Client == nil || cfg.Hosts == nil || cfg.Tunnels == nil {
		return nil, errors.New("dra: the kubelet plugin needs a client, hosts and tunnels")
	}
	if cfg.RegistrarDir == "" {
		cfg.RegistrarDir = DefaultRegistrarDir
	}
	if cfg.PluginDir == "" {
		cfg.PluginDir = DefaultPluginDir
	}
	if cfg.CDIDir == "" {
		cfg.CDIDir = DefaultCDIDir
	}
	for _, d := range []string{cfg.RegistrarDir, cfg.PluginDir, cfg.CDIDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("dra: %w", err)
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Plugin{cfg: cfg, log: log}
	hctx := klog.NewContext(context.WithoutCancel(ctx), logr.FromSlogHandler(log.Handler()))
	h, err := kubeletplugin.Start(hctx, p,
		kubeletplugin.DriverName(DriverName),
		kubeletplugin.KubeClient(cfg.Client),
		kubeletplugin.RegistrarDirectoryPath(cfg.RegistrarDir),
		kubeletplugin.PluginDataDirectoryPath(cfg.PluginDir),
		// Health follows the hosts through the published slices.
		kubeletplugin.HealthService(false),
		kubeletplugin.GRPCVerbosity(-1),
		kubeletplugin.GRPCInterceptor(p.observe),
	)
	if err != nil {
		return nil, fmt.Errorf("dra: start the kubelet plugin: %w", err)
	}
	p.helper = h
	return p, nil
}

// Close stops serving the kubelet. Prepared claims keep their tunnels and
// CDI specs (the pods still run); the next agent serves them. A second
// Close returns net.ErrClosed.
func (p *Plugin) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return net.ErrClosed
	}
	p.closed = true
	p.mu.Unlock()
	p.helper.Stop()
	return nil
}

// Registered reports whether the kubelet has accepted the plugin.
func (p *Plugin) Registered() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.registered
}

// observe sees the kubelet's calls on both of the helper's servers and
// keeps what NotifyRegistrationStatus says (the helper's own copy is not
// safe to read concurrently).
func (p *Plugin) observe(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if st, ok := req.(*registerapi.RegistrationStatus); ok {
		p.mu.Lock()
		p.registered = st.GetPluginRegistered()
		p.mu.Unlock()
	}
	return handler(ctx, req)
}

// PrepareResourceClaims implements kubeletplugin.DRAPlugin: a tunnel for
// every device allocated to each claim from this driver, and a CDI spec
// naming them.
func (p *Plugin) PrepareResourceClaims(ctx context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	res := make(map[types.UID]kubeletplugin.PrepareResult, len(claims))
	for _, c := range claims {
		devs, err := p.prepare(ctx, c)
		if err != nil {
			p.log.Warn("dra: prepare claim", "claim", c.Namespace+"/"+c.Name, "uid", c.UID, "err", err)
			// Nothing half-prepared stays behind.
			p.unprepare(ctx, c.UID)
		} else {
			p.log.Info("dra: prepared claim", "claim", c.Namespace+"/"+c.Name, "uid", c.UID, "devices", len(devs))
		}
		res[c.UID] = kubeletplugin.PrepareResult{Err: err, Devices: devs}
	}
	return res, nil
}

func (p *Plugin) prepare(ctx context.Context, c *resourceapi.ResourceClaim) ([]kubeletplugin.Device, error) {
	if !validUID(string(c.UID)) {
		return nil, fmt.Errorf("dra: claim UID %q", c.UID)
	}
	if c.Status.Allocation == nil {
		return nil, errors.New("dra: claim is not allocated")
	}
	pod, err := p.podOf(ctx, c)
	if err != nil {
		return nil, err
	}
	hosts, _ := p.cfg.Hosts.Snapshot()
	spec := cdispec.Spec{Kind: CDIKind}
	var devs []kubeletplugin.Device
	for _, r := range c.Status.Allocation.Devices.Results {
		if r.Driver != DriverName {
			continue
		}
		gpu, err := parseDeviceName(r.Device)
		if err != nil {
			return nil, err
		}
		if _, ok := kube.Find(hosts, r.Pool); !ok {
			return nil, fmt.Errorf("dra: device %s/%s: %q is not one of this agent's GPU hosts", r.Pool, r.Device, r.Pool)
		}
		i := len(devs)
		t, err := p.cfg.Tunnels.Open(kube.TunnelSpec{
			ID:    kube.TunnelID("c-", string(c.UID), r.Pool, r.Device),
			Owner: string(c.UID),
			Host:  r.Pool,
			GPU:   gpu,
			Pod:   pod,
		})
		if err != nil {
			return nil, err
		}
		name := string(c.UID) + "-" + strconv.Itoa(i)
		env := t.Env(i)
		var envs []string
		for _, k := range slices.Sorted(maps.Keys(env)) {
			envs = append(envs, k+"="+env[k])
		}
		spec.Devices = append(spec.Devices, cdispec.Device{
			Name: name,
			ContainerEdits: cdispec.ContainerEdits{
				Env:    envs,
				Mounts: []*cdispec.Mount{{HostPath: t.HostDir, ContainerPath: t.ContainerDir, Type: "bind", Options: []string{"rbind", "ro"}}},
			},
		})
		devs = append(devs, kubeletplugin.Device{
			Requests:     []string{r.Request},
			PoolName:     r.Pool,
			DeviceName:   r.Device,
			CDIDeviceIDs: []string{CDIKind + "=" + name},
		})
	}
	if len(devs) == 0 {
		return nil, nil
	}
	v, err := cdispec.MinimumRequiredVersion(&spec)
	if err != nil {
		return nil, fmt.Errorf("dra: CDI spec: %w", err)
	}
	spec.Version = v
	b, err := json.MarshalIndent(&spec, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("dra: CDI spec: %w", err)
	}
	if err := kube.WriteFileAtomic(p.cdiFile(c.UID), b, 0o644); err != nil {
		return nil, fmt.Errorf("dra: CDI spec: %w", err)
	}
	return devs, nil
}

// cdiFile is the CDI spec of a claim's devices.
func (p *Plugin) cdiFile(uid types.UID) string {
	return filepath.Join(p.cfg.CDIDir, "gpumesh.dev-gpu_"+string(uid)+".json")
}

// UnprepareResourceClaims implements kubeletplugin.DRAPlugin: it closes
// the claims' tunnels (ending their connections to the hosts) and removes
// their CDI specs. A claim that is not prepared is not an error.
func (p *Plugin) UnprepareResourceClaims(ctx context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	res := make(map[types.UID]error, len(claims))
	for _, c := range claims {
		err := p.unprepare(ctx, c.UID)
		if err != nil {
			p.log.Warn("dra: unprepare claim", "claim", c.String(), "err", err)
		} else {
			p.log.Info("dra: unprepared claim", "claim", c.String(), "uid", c.UID)
		}
		res[c.UID] = err
	}
	return res, nil
}

func (p *Plugin) unprepare(ctx context.Context, uid types.UID) error {
	if !validUID(string(uid)) {
		return fmt.Errorf("dra: claim UID %q", uid)
	}
	err := p.cfg.Tunnels.RemoveOwner(ctx, string(uid))
	if rerr := os.Remove(p.cdiFile(uid)); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		err = errors.Join(err, rerr)
	}
	return err
}

// validUID guards the file names made from a claim UID.
func validUID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// HandleError implements kubeletplugin.DRAPlugin: background errors are
// logged; none of them stops the agent.
func (p *Plugin) HandleError(_ context.Context, err error, msg string) {
	p.log.Warn("dra: kubelet plugin", "msg", msg, "err", err)
}

// WatchHealthStatus implements kubeletplugin.DRAPlugin; the health service
// is off (HealthService(false)).
func (p *Plugin) WatchHealthStatus(context.Context, chan<- kubeletplugin.DeviceHealthReport) error {
	return kubeletplugin.ErrHealthNotSupported
}
