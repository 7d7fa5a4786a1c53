package kubelettest

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	prpb "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// PodResources is the kubelet's PodResources service
// (k8s.io/kubelet/pkg/apis/podresources/v1) on a Unix socket, as the
// kubelet serves it at /var/lib/kubelet/pod-resources/kubelet.sock: which
// devices of which resource each pod's containers hold. A kubelet records
// a device plugin allocation there once its Allocate call returns and
// forgets it when the pod is gone; a test does both with Assign and
// Forget.
type PodResources struct {
	// Socket is the socket's path.
	Socket string

	mu   sync.Mutex
	pods []*prpb.PodResources // guarded by mu
}

// StartPodResources serves the PodResources service on socket, and stops
// it at tb's cleanup.
func StartPodResources(tb testing.TB, socket string) *PodResources {
	tb.Helper()
	if err := os.MkdirAll(filepath.Dir(socket), 0o755); err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("unix", socket)
	if err != nil {
		tb.Fatalf("kubelettest: pod resources: %v", err)
	}
	pr := &PodResources{Socket: socket}
	srv := grpc.NewServer()
	prpb.RegisterPodResourcesListerServer(srv, &podResourcesServer{pr: pr})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		srv.Serve(ln)
	}()
	tb.Cleanup(func() {
		srv.Stop()
		wg.Wait()
	})
	return pr
}

// Assign records that container of pod namespace/name holds devices of
// resource, as the kubelet does after a device plugin's Allocate.
func (pr *PodResources) Assign(namespace, name, container, resource string, devices ...string) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	i := slices.IndexFunc(pr.pods, func(p *prpb.PodResources) bool { return p.Namespace == namespace && p.Name == name })
	if i < 0 {
		pr.pods = append(pr.pods, &prpb.PodResources{Namespace: namespace, Name: name})
		i = len(pr.pods) - 1
	}
	p := pr.pods[i]
	j := slices.IndexFunc(p.Containers, func(c *prpb.ContainerResources) bool { return c.Name == container })
	if j < 0 {
		p.Containers = append(p.Containers, &prpb.ContainerResources{Name: container})
		j = len(p.Containers) - 1
	}
	c := p.Containers[j]
	c.Devices = append(c.Devices, &prpb.ContainerDevices{ResourceName: resource, DeviceIds: slices.Clone(devices)})
}

// Forget drops pod namespace/name, as the kubelet does once it is gone.
func (pr *PodResources) Forget(namespace, name string) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pr.pods = slices.DeleteFunc(pr.pods, func(p *prpb.PodResources) bool { return p.Namespace == namespace && p.Name == name })
}

type podResourcesServer struct {
	prpb.UnimplementedPodResourcesListerServer
	pr *PodResources
}

func (s *podResourcesServer) List(context.Context, *prpb.ListPodResourcesRequest) (*prpb.ListPodResourcesResponse, error) {
	s.pr.mu.Lock()
	defer s.pr.mu.Unlock()
	res := &prpb.ListPodResourcesResponse{}
	for _, p := range s.pr.pods {
		res.PodResources = append(res.PodResources, proto.CloneOf(p))
	}
	return res, nil
}

func (s *podResourcesServer) Get(_ context.Context, req *prpb.GetPodResourcesRequest) (*prpb.GetPodResourcesResponse, error) {
	s.pr.mu.Lock()
	defer s.pr.mu.Unlock()
	for _, p := range s.pr.pods {
		if p.Namespace == req.GetPodNamespace() && p.Name == req.GetPodName() {
			return &prpb.GetPodResourcesResponse{PodResources: proto.CloneOf(p)}, nil
		}
	}
	return nil, status.Error(codes.NotFound, fmt.Sprintf("pod %s not found in namespace %s", req.GetPodName(), req.GetPodNamespace()))
}

func (s *podResourcesServer) GetAllocatableResources(context.Context, *prpb.AllocatableResourcesRequest) (*prpb.AllocatableResourcesResponse, error) {
	return &prpb.AllocatableResourcesResponse{}, nil
}
