package kubelettest

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/fsnotify/fsnotify"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/apimachinery/pkg/types"
	drapb "k8s.io/kubelet/pkg/apis/dra/v1"
	drapbv1beta1 "k8s.io/kubelet/pkg/apis/dra/v1beta1"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// DRAKubelet is a kubelet's plugin watcher and DRA manager: it finds
// plugins by their registration sockets in RegistryDir.
type DRAKubelet struct {
	RegistryDir string
}

// DRAPlugin is the kubelet's connection to one registered DRA driver.
type DRAPlugin struct {
	// Info is what the plugin's registration socket said.
	Info *registerapi.PluginInfo
	// Service is the DRA gRPC service the kubelet chose, the plugin's
	// first that it speaks ("v1.DRAPlugin").
	Service string
	client  drapb.DRAPluginClient
}

// servicesSupported are the DRA gRPC services a v1.37 kubelet speaks.
var servicesSupported = []string{drapb.DRAPluginService, drapbv1beta1.DRAPluginService}

// WaitPlugin waits until a DRA plugin for driver has a registration socket
// in RegistryDir, registers it as the kubelet does (GetInfo, validate,
// NotifyRegistrationStatus) and connects to its DRA endpoint. The
// connections are closed at tb's cleanup.
func (k *DRAKubelet) WaitPlugin(ctx context.Context, tb testing.TB, driver string) (*DRAPlugin, error) {
	tb.Helper()
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	defer w.Close()
	if err := w.Add(k.RegistryDir); err != nil {
		return nil, err
	}
	tried := map[string]error{}
	for {
		entries, err := os.ReadDir(k.RegistryDir)
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			if e.Type()&fs.ModeSocket == 0 {
				continue
			}
			p, err := k.register(ctx, tb, filepath.Join(k.RegistryDir, e.Name()), driver)
			if err == nil && p != nil {
				return p, nil
			}
			tried[e.Name()] = err
		}
		select {
		case <-w.Events:
		case err := <-w.Errors:
			return nil, err
		case <-ctx.Done():
			return nil, fmt.Errorf("kubelettest: no DRA plugin for %s registered in %s: %w (sockets tried: %v)", driver, k.RegistryDir, ctx.Err(), tried)
		}
	}
}

// register talks to one registration socket; it returns nil, nil for a
// plugin of another type or driver.
func (k *DRAKubelet) register(ctx context.Context, tb testing.TB, sock, driver string) (*DRAPlugin, error) {
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	reg := registerapi.NewRegistrationClient(conn)
	info, err := reg.GetInfo(ctx, &registerapi.InfoRequest{})
	if err != nil {
		return nil, fmt.Errorf("GetInfo: %w", err)
	}
	if info.GetType() != registerapi.DRAPlugin || info.GetName() != driver {
		return nil, nil
	}
	var service string
	for _, s := range info.GetSupportedVersions() {
		if slices.Contains(servicesSupported, s) {
			service = s
			break
		}
	}
	status := &registerapi.RegistrationStatus{PluginRegistered: service != ""}
	if service == "" {
		status.Error = fmt.Sprintf("none of the plugin's services %q is supported (%q)", info.GetSupportedVersions(), servicesSupported)
	}
	if _, err := reg.NotifyRegistrationStatus(ctx, status); err != nil {
		return nil, fmt.Errorf("NotifyRegistrationStatus: %w", err)
	}
	if service == "" {
		return nil, fmt.Errorf("kubelettest: %s", status.Error)
	}
	if !filepath.IsAbs(info.GetEndpoint()) {
		return nil, fmt.Errorf("kubelettest: DRA endpoint %q is not an absolute path", info.GetEndpoint())
	}
	dc, err := grpc.NewClient("unix://"+info.GetEndpoint(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	tb.Cleanup(func() { dc.Close() })
	p := &DRAPlugin{Info: info, Service: service, client: drapb.NewDRAPluginClient(dc)}
	if service == drapbv1beta1.DRAPluginService {
		p.client = drapbv1beta1.V1Beta1ClientWrapper{DRAPluginClient: drapbv1beta1.NewDRAPluginClient(dc)}
	}
	return p, nil
}

// Claim names a ResourceClaim, as the kubelet passes it.
type Claim struct {
	Namespace, Name string
	UID             types.UID
}

func (c Claim) pb() *drapb.Claim {
	return &drapb.Claim{Namespace: c.Namespace, Name: c.Name, Uid: string(c.UID)}
}

// Prepare asks the plugin to prepare claim and returns its devices, or the
// plugin's error for that claim.
func (p *DRAPlugin) Prepare(ctx context.Context, claim Claim) ([]*drapb.Device, error) {
	res, err := p.client.NodePrepareResources(ctx, &drapb.NodePrepareResourcesRequest{Claims: []*drapb.Claim{claim.pb()}}, grpc.WaitForReady(true))
	if err != nil {
		return nil, fmt.Errorf("NodePrepareResources: %w", err)
	}
	r, ok := res.GetClaims()[string(claim.UID)]
	if !ok {
		return nil, fmt.Errorf("NodePrepareResources: no result for claim %s", claim.UID)
	}
	if r.GetError() != "" {
		return nil, fmt.Errorf("NodePrepareResources: claim %s/%s: %s", claim.Namespace, claim.Name, r.GetError())
	}
	return r.GetDevices(), nil
}

// Unprepare asks the plugin to unprepare claim.
func (p *DRAPlugin) Unprepare(ctx context.Context, claim Claim) error {
	res, err := p.client.NodeUnprepareResources(ctx, &drapb.NodeUnprepareResourcesRequest{Claims: []*drapb.Claim{claim.pb()}}, grpc.WaitForReady(true))
	if err != nil {
		return fmt.Errorf("NodeUnprepareResources: %w", err)
	}
	r, ok := res.GetClaims()[string(claim.UID)]
	if !ok {
		return fmt.Errorf("NodeUnprepareResources: no result for claim %s", claim.UID)
	}
	if r.GetError() != "" {
		return fmt.Errorf("NodeUnprepareResources: claim %s/%s: %s", claim.Namespace, claim.Name, r.GetError())
	}
	return nil
}

// CDIDeviceIDs lists the CDI devices of prepared devices, in order.
func CDIDeviceIDs(devs []*drapb.Device) []string {
	var ids []string
	for _, d := range devs {
		ids = append(ids, d.GetCdiDeviceIds()...)
	}
	return ids
}

// cdiQualified splits "vendor.com/class=name".
func cdiQualified(id string) (kind, name string, ok bool) {
	kind, name, ok = strings.Cut(id, "=")
	return kind, name, ok && strings.Contains(kind, "/") && name != ""
}
