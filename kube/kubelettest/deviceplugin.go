// Package kubelettest is the kubelet's side of the agent, for tests: no
// kubelet can run here (no container runtime), so this package speaks the
// kubelet's real gRPC protocols to the agent, over Unix sockets in the
// directories a kubelet uses. DevicePluginKubelet serves the device plugin
// Registration service and then calls the plugin's ListAndWatch and
// Allocate; DRAKubelet finds plugins by their registration sockets
// (pluginregistration), calls GetInfo and NotifyRegistrationStatus, and
// then NodePrepareResources and NodeUnprepareResources. PodResources
// serves the kubelet's PodResources API (which pod holds which device).
// Container starts
// what a container runtime would: a process with the env and mounts a
// device plugin or a CDI spec gives.
package kubelettest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pb "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// kubeletSocket is the kubelet's registration socket in the device
// plugin directory.
const kubeletSocket = "kubelet.sock"

// DevicePluginKubelet is a kubelet's device manager: it serves the
// Registration service on DIR/kubelet.sock.
type DevicePluginKubelet struct {
	// Dir is the device plugin directory.
	Dir string

	regs chan *pb.RegisterRequest

	mu  sync.Mutex
	srv *grpc.Server // the running registration server; guarded by mu
	wg  sync.WaitGroup
}

// StartDevicePluginKubelet serves the Registration service in dir, and
// stops it at tb's cleanup.
func StartDevicePluginKubelet(tb testing.TB, dir string) *DevicePluginKubelet {
	tb.Helper()
	k := &DevicePluginKubelet{Dir: dir, regs: make(chan *pb.RegisterRequest, 16)}
	if err := k.serve(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(k.stop)
	return k
}

func (k *DevicePluginKubelet) serve() error {
	ln, err := net.Listen("unix", filepath.Join(k.Dir, kubeletSocket))
	if err != nil {
		return fmt.Errorf("kubelettest: listen: %w", err)
	}
	srv := grpc.NewServer()
	pb.RegisterRegistrationServer(srv, &registration{k: k})
	k.mu.Lock()
	k.srv = srv
	k.mu.Unlock()
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		srv.Serve(ln)
	}()
	return nil
}

func (k *DevicePluginKubelet) stop() {
	k.mu.Lock()
	srv := k.srv
	k.srv = nil
	k.mu.Unlock()
	if srv != nil {
		srv.Stop()
	}
	k.wg.Wait()
}

// Restart does what a restarting kubelet does to the directory: it stops
// serving, removes every socket there (the plugins' too), and serves a new
// kubelet.sock.
func (k *DevicePluginKubelet) Restart(tb testing.TB) {
	tb.Helper()
	k.stop()
	entries, err := os.ReadDir(k.Dir)
	if err != nil {
		tb.Fatal(err)
	}
	for _, e := range entries {
		if e.Type()&fs.ModeSocket != 0 {
			os.Remove(filepath.Join(k.Dir, e.Name()))
		}
	}
	if err := k.serve(); err != nil {
		tb.Fatal(err)
	}
}

// Registration waits for the next plugin registration the kubelet accepted.
func (k *DevicePluginKubelet) Registration(ctx context.Context) (*pb.RegisterRequest, error) {
	select {
	case r := <-k.regs:
		return r, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("kubelettest: no device plugin registered: %w", ctx.Err())
	}
}

type registration struct {
	pb.UnimplementedRegistrationServer
	k *DevicePluginKubelet
}

// Register checks a registration as the kubelet does: a version it
// speaks, an extended resource name outside kubernetes.io, and an
// endpoint that is a socket in its directory.
func (r *registration) Register(_ context.Context, req *pb.RegisterRequest) (*pb.Empty, error) {
	if req.GetVersion() != pb.Version {
		return nil, fmt.Errorf("kubelettest: device plugin version %q is not supported (want %s)", req.GetVersion(), pb.Version)
	}
	domain, name, ok := strings.Cut(req.GetResourceName(), "/")
	if !ok || domain == "" || name == "" || strings.HasSuffix(domain, "kubernetes.io") {
		return nil, fmt.Errorf("kubelettest: %q is not an extended resource name", req.GetResourceName())
	}
	ep := req.GetEndpoint()
	if ep == "" || strings.Contains(ep, "/") {
		return nil, fmt.Errorf("kubelettest: endpoint %q is not a socket name in %s", ep, r.k.Dir)
	}
	if fi, err := os.Stat(filepath.Join(r.k.Dir, ep)); err != nil || fi.Mode().Type() != fs.ModeSocket {
		return nil, fmt.Errorf("kubelettest: endpoint %s is not a socket", ep)
	}
	select {
	case r.k.regs <- req:
	default:
		return nil, errors.New("kubelettest: too many registrations unread")
	}
	return &pb.Empty{}, nil
}

// DevicePlugin is the kubelet's connection to one registered plugin.
type DevicePlugin struct {
	Client pb.DevicePluginClient
	conn   *grpc.ClientConn
}

// Connect dials the plugin that sent req, as the kubelet does after
// accepting its registration. It is closed at tb's cleanup.
func (k *DevicePluginKubelet) Connect(tb testing.TB, req *pb.RegisterRequest) *DevicePlugin {
	tb.Helper()
	conn, err := grpc.NewClient("unix://"+filepath.Join(k.Dir, req.GetEndpoint()), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return &DevicePlugin{Client: pb.NewDevicePluginClient(conn), conn: conn}
}

// Watch runs ListAndWatch until ctx ends, sending each device list on the
// returned channel (which is closed when the stream ends).
func (d *DevicePlugin) Watch(ctx context.Context) (<-chan []*pb.Device, error) {
	stream, err := d.Client.ListAndWatch(ctx, &pb.Empty{}, grpc.WaitForReady(true))
	if err != nil {
		return nil, err
	}
	ch := make(chan []*pb.Device)
	go func() {
		defer close(ch)
		for {
			res, err := stream.Recv()
			if err != nil {
				return
			}
			select {
			case ch <- res.GetDevices():
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

// WaitDevices reads lists from ch until one satisfies ok, and returns it.
func WaitDevices(ctx context.Context, ch <-chan []*pb.Device, what string, ok func([]*pb.Device) bool) ([]*pb.Device, error) {
	var last []*pb.Device
	for {
		select {
		case l, open := <-ch:
			if !open {
				return last, fmt.Errorf("kubelettest: ListAndWatch ended waiting for %s; last list %v", what, last)
			}
			last = l
			if ok(l) {
				return l, nil
			}
		case <-ctx.Done():
			return last, fmt.Errorf("kubelettest: waiting for %s: %w; last list %v", what, ctx.Err(), last)
		}
	}
}
