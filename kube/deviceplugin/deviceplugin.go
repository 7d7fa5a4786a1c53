// Package deviceplugin offers the GPUs of gpumesh's GPU hosts to a node's
// pods as the extended resource gpumesh.dev/gpu, through the kubelet's
// device plugin API (k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1): it
// registers on the kubelet's socket, lists one device per remote GPU (or
// several, Config.Slots, for sharing) with its host's health, and answers
// Allocate with a tunnel per device: GPUMESH_TARGET and a mount of the
// tunnel's directory. It registers again whenever the kubelet's socket is
// recreated (a kubelet restart). With Pods, each connection through an
// allocation's tunnel is named for the pod that holds the device, from
// the kubelet's PodResources API (pods.go).
//
// Every node's kubelet sees every remote GPU: the device plugin API has no
// cluster-wide allocation, so a GPU is shared by the nodes' pods and the
// host's policy (quotas, QoS) arbitrates. Exclusive allocation across the
// cluster is what kube/dra is for.
package deviceplugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	pb "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpumesh/gpumesh/kube"
)

// ResourceName is the extended resource a pod asks for:
// resources.limits: {gpumesh.dev/gpu: 1}.
const ResourceName = "gpumesh.dev/gpu"

// SocketName is the plugin's socket in the kubelet's device plugin
// directory.
const SocketName = "gpumesh.sock"

// KubeletSocket is the kubelet's registration socket in that directory.
const KubeletSocket = "kubelet.sock"

// maxSlots bounds Config.Slots.
const maxSlots = 64

// Config configures a Plugin.
type Config struct {
	// Hosts are the GPU hosts whose GPUs are offered. Required.
	Hosts kube.Hosts
	// Tunnels serves the allocations. Required.
	Tunnels *kube.Tunnels
	// Slots is how many devices each GPU is offered as, for sharing;
	// 0 means 1, at most 64.
	Slots int
	// Pods, when set, names the pod behind each connection to an
	// allocation's tunnel and releases it once it is gone; Run runs it.
	// The Tunnels' PodOf must be its PodOf.
	Pods *Pods
	// Dir is the kubelet's device plugin directory; empty means
	// /var/lib/kubelet/device-plugins.
	Dir string
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
}

// Plugin is the device plugin. Run serves it.
type Plugin struct {
	cfg Config
	log *slog.Logger

	mu         sync.Mutex
	registered bool  // the kubelet accepted the last registration; guarded by mu
	lastErr    error // the last registration's failure; guarded by mu
	regs       int   // registrations accepted so far; guarded by mu
}

// New validates cfg.
func New(cfg Config) (*Plugin, error) {
	if cfg.Hosts == nil || cfg.Tunnels == nil {
		return nil, errors.New("deviceplugin: hosts and tunnels are required")
	}
	if cfg.Slots == 0 {
		cfg.Slots = 1
	}
	if cfg.Slots < 1 || cfg.Slots > maxSlots {
		return nil, fmt.Errorf("deviceplugin: %d slots per GPU: want 1 to %d", cfg.Slots, maxSlots)
	}
	if cfg.Dir == "" {
		cfg.Dir = pb.DevicePluginPath
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Plugin{cfg: cfg, log: log}, nil
}

// Status says whether the kubelet has accepted the plugin.
type Status struct {
	Registered bool
	// Registrations counts the registrations the kubelet accepted (one
	// more after each kubelet restart).
	Registrations int
	// Err is why the last registration failed, if it did.
	Err error
}

// Status returns the plugin's registration state.
func (p *Plugin) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Status{Registered: p.registered, Registrations: p.regs, Err: p.lastErr}
}

// Run serves the plugin on its socket and registers it with the kubelet,
// again whenever the kubelet's socket is recreated (a kubelet restart),
// until ctx ends.
func (p *Plugin) Run(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("deviceplugin: watch %s: %w", p.cfg.Dir, err)
	}
	defer w.Close()
	if err := w.Add(p.cfg.Dir); err != nil {
		return fmt.Errorf("deviceplugin: watch %s: %w", p.cfg.Dir, err)
	}
	if p.cfg.Pods != nil {
		pctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.cfg.Pods.Run(pctx)
		}()
		defer func() {
			cancel()
			wg.Wait()
		}()
	}
	for {
		restart, err := p.serveOnce(ctx, w)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		p.log.Info("deviceplugin: serving again", "why", restart)
	}
}

// serveOnce serves the plugin until the kubelet's socket is recreated
// (returning why) or ctx ends.
func (p *Plugin) serveOnce(ctx context.Context, w *fsnotify.Watcher) (string, error) {
	sock := filepath.Join(p.cfg.Dir, SocketName)
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("deviceplugin: remove stale socket: %w", err)
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return "", fmt.Errorf("deviceplugin: listen: %w", err)
	}
	sctx, cancel := context.WithCancel(ctx)
	srv := grpc.NewServer()
	pb.RegisterDevicePluginServer(srv, &server{p: p, ctx: sctx})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		srv.Serve(ln)
	}()
	defer func() {
		cancel() // ends ListAndWatch streams
		srv.Stop()
		wg.Wait()
	}()

	p.setRegistered(false, nil)
	register := time.NewTimer(0)
	defer register.Stop()
	backoff := 100 * time.Millisecond
	for {
		select {
		case <-ctx.Done():
			return "", nil
		case <-register.C:
			err := p.register(ctx)
			p.setRegistered(err == nil, err)
			if err != nil {
				// The kubelet may not be up yet; its socket's creation
				// also wakes us.
				p.log.Warn("deviceplugin: register with the kubelet", "err", err, "retry_in", backoff)
				register.Reset(backoff)
				backoff = min(2*backoff, 30*time.Second)
				continue
			}
			p.log.Info("deviceplugin: registered with the kubelet", "resource", ResourceName, "socket", sock)
		case ev, ok := <-w.Events:
			if !ok {
				return "", errors.New("deviceplugin: directory watch ended")
			}
			// A restarting kubelet removes every socket here (this
			// plugin's too), then creates its own: that creation is the
			// one sign to act on.
			if ev.Name == filepath.Join(p.cfg.Dir, KubeletSocket) && ev.Has(fsnotify.Create) {
				return "the kubelet's socket was recreated", nil
			}
		case err, ok := <-w.Errors:
			if !ok {
				return "", errors.New("deviceplugin: directory watch ended")
			}
			p.log.Warn("deviceplugin: directory watch", "err", err)
		}
	}
}

func (p *Plugin) setRegistered(ok bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.registered, p.lastErr = ok, err
	if ok {
		p.regs++
	}
}

// register calls the kubelet's Registration service.
func (p *Plugin) register(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+filepath.Join(p.cfg.Dir, KubeletSocket),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = pb.NewRegistrationClient(conn).Register(ctx, &pb.RegisterRequest{
		Version:      pb.Version,
		Endpoint:     SocketName,
		ResourceName: ResourceName,
		Options:      &pb.DevicePluginOptions{},
	}, grpc.WaitForReady(true))
	return err
}

// device is one offered device and the GPU it stands for.
type device struct {
	id      string
	host    string
	gpu     int
	healthy bool
}

// devices lists the offered devices, in a stable order.
func (p *Plugin) devices(hosts []kube.Host) []device {
	var ds []device
	for _, h := range hosts {
		for _, d := range h.Devices {
			for s := range p.cfg.Slots {
				id := h.Name + "-gpu" + strconv.Itoa(d.Index)
				if p.cfg.Slots > 1 {
					id += "-" + strconv.Itoa(s)
				}
				ds = append(ds, device{id: id, host: h.Name, gpu: d.Index, healthy: h.Healthy})
			}
		}
	}
	return ds
}

// server is the DevicePlugin service for one serveOnce.
type server struct {
	pb.UnimplementedDevicePluginServer
	p   *Plugin
	ctx context.Context // ends when the plugin stops serving
}

func (s *server) GetDevicePluginOptions(context.Context, *pb.Empty) (*pb.DevicePluginOptions, error) {
	return &pb.DevicePluginOptions{}, nil
}

// ListAndWatch sends the devices, then again whenever they or their
// health change.
func (s *server) ListAndWatch(_ *pb.Empty, stream pb.DevicePlugin_ListAndWatchServer) error {
	var last []*pb.Device
	for {
		hosts, changed := s.p.cfg.Hosts.Snapshot()
		var list []*pb.Device
		for _, d := range s.p.devices(hosts) {
			health := pb.Healthy
			if !d.healthy {
				health = pb.Unhealthy
			}
			list = append(list, &pb.Device{ID: d.id, Health: health})
		}
		if last == nil || !slices.EqualFunc(list, last, func(a, b *pb.Device) bool { return a.ID == b.ID && a.Health == b.Health }) {
			if err := stream.Send(&pb.ListAndWatchResponse{Devices: list}); err != nil {
				return err
			}
			last = list
			if last == nil {
				last = []*pb.Device{}
			}
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		case <-s.ctx.Done():
			return nil
		}
	}
}

func (s *server) GetPreferredAllocation(context.Context, *pb.PreferredAllocationRequest) (*pb.PreferredAllocationResponse, error) {
	return nil, status.Error(codes.Unimplemented, "deviceplugin: no preferred allocation")
}

// Allocate opens a fresh tunnel per allocated device (closing the one a
// previous allocation of that device had) and tells the container where
// they are.
func (s *server) Allocate(ctx context.Context, req *pb.AllocateRequest) (*pb.AllocateResponse, error) {
	hosts, _ := s.p.cfg.Hosts.Snapshot()
	byID := make(map[string]device)
	for _, d := range s.p.devices(hosts) {
		byID[d.id] = d
	}
	if s.p.cfg.Pods != nil {
		// The devices' previous pods are gone: release them now.
		defer s.p.cfg.Pods.Sweep()
	}
	res := &pb.AllocateResponse{}
	for _, cr := range req.GetContainerRequests() {
		var tunnels []*kube.Tunnel
		var mounts []*pb.Mount
		for _, id := range cr.GetDevicesIds() {
			d, ok := byID[id]
			if !ok {
				return nil, status.Errorf(codes.NotFound, "deviceplugin: no device %q", id)
			}
			spec := kube.TunnelSpec{ID: kube.TunnelID("d-", id), Owner: "device " + id, Host: d.host, GPU: d.gpu, Device: id}
			if err := s.p.cfg.Tunnels.Remove(ctx, spec.ID); err != nil {
				return nil, status.Errorf(codes.Internal, "deviceplugin: device %s: %v", id, err)
			}
			t, err := s.p.cfg.Tunnels.Open(spec)
			if err != nil {
				return nil, status.Errorf(codes.Internal, "deviceplugin: device %s: %v", id, err)
			}
			tunnels = append(tunnels, t)
			mounts = append(mounts, &pb.Mount{ContainerPath: t.ContainerDir, HostPath: t.HostDir, ReadOnly: true})
			s.p.log.Info("deviceplugin: allocated", "device", id, "host", d.host, "gpu", d.gpu, "tunnel", spec.ID)
		}
		res.ContainerResponses = append(res.ContainerResponses, &pb.ContainerAllocateResponse{
			Envs:   kube.ContainerEnv(tunnels),
			Mounts: mounts,
		})
	}
	return res, nil
}

func (s *server) PreStartContainer(context.Context, *pb.PreStartContainerRequest) (*pb.PreStartContainerResponse, error) {
	return &pb.PreStartContainerResponse{}, nil
}
