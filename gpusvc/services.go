package gpusvc

import (
	"context"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionalphapb "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"

	"github.com/gpumesh/gpumesh/gpusvc/cudapb"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
)

// The services of the endpoint. Every one is served through the same
// handshake, tap handle, interceptors and stats handler, so every call,
// whatever its service, is identified, refused before it is read when the
// policy gives the caller nothing, and recorded with its caller:
//
//   - gpumesh.v1.GPU, the compute API;
//   - cuda.CUDAService, a door into it for clients of remote-GPU posts
//     (door.go);
//   - grpc.health.v1.Health (health.go), for grpc-health-probe, Kubernetes
//     gRPC probes and clients' health checking;
//   - grpc.reflection.v1.ServerReflection (and v1alpha, for older
//     clients), so that grpcurl and other tools list and describe the
//     services.
//
// Health and reflection need no right of their own: a caller the policy
// gives some right on this host (policy.Admits, as for Devices) may use
// them; one it gives nothing is refused at admission. They tell nothing
// the caller could not learn from Devices or from the published .proto
// files: the services, their messages, and whether the host serves.

// Service names, as an unknown one's error lists them (v1alpha reflection,
// kept for older clients, is not listed).
var served = []string{
	pb.GPU_ServiceDesc.ServiceName,
	cudapb.CUDAService_ServiceDesc.ServiceName,
	healthpb.Health_ServiceDesc.ServiceName,
	reflectionpb.ServerReflection_ServiceDesc.ServiceName,
}

// register registers every service of the endpoint on s.grpc.
func (s *Server) register() {
	pb.RegisterGPUServer(s.grpc, s)
	s.grpc.RegisterService(&cudaService, s)
	healthpb.RegisterHealthServer(s.grpc, s.health)
	opts := reflection.ServerOptions{Services: s.grpc}
	reflectionpb.RegisterServerReflectionServer(s.grpc, reflectionV1{s, reflection.NewServerV1(opts)})
	reflectionalphapb.RegisterServerReflectionServer(s.grpc, reflectionV1alpha{s, reflection.NewServer(opts)})
}

// methods are gpumesh.v1.GPU's methods: a record names one of these (or
// one of the names methodName gives other services' methods), never what
// a client wrote in its request's path.
var methods = []string{"Devices", "Compute", "Stream", "Explain", "OpenSession", "CloseSession", "Alloc", "Free", "Write", "Read", "LoadModule", "Launch"}

// methodName is the name a call's record gives its method: gpumesh.v1.GPU's
// by their own names, the other services' prefixed ("cuda.Compute",
// "health.Check", "reflection"), and "unknown" for any other path.
func methodName(full string) string {
	service, method, _ := strings.Cut(strings.TrimPrefix(full, "/"), "/")
	switch service {
	case pb.GPU_ServiceDesc.ServiceName:
		if slices.Contains(methods, method) {
			return method
		}
	case cudapb.CUDAService_ServiceDesc.ServiceName:
		if method == "Compute" {
			return "cuda.Compute"
		}
	case healthpb.Health_ServiceDesc.ServiceName:
		switch method {
		case "Check", "Watch", "List":
			return "health." + method
		}
	case reflectionpb.ServerReflection_ServiceDesc.ServiceName, reflectionalphapb.ServerReflection_ServiceDesc.ServiceName:
		if method == "ServerReflectionInfo" {
			return "reflection"
		}
	}
	return "unknown"
}

// loadOf reports whether a method's calls count as the host's calls in
// flight (Load, Devices): a health Watch or a reflection stream stays open
// doing no work, and a pool reading the load must not take it for some.
func loadOf(method string) bool {
	return method != "health.Watch" && method != "reflection"
}

// unknown answers a method the host does not serve, naming what it does.
func (s *Server) unknown(_ any, ss grpc.ServerStream) error {
	full, _ := grpc.MethodFromServerStream(ss)
	service, method, _ := strings.Cut(strings.TrimPrefix(full, "/"), "/")
	if info, ok := s.grpc.GetServiceInfo()[service]; ok {
		names := make([]string, len(info.Methods))
		for i, m := range info.Methods {
			names[i] = m.Name
		}
		return status.Errorf(codes.Unimplemented, "gpumesh: unknown method %s of %s; it has %s",
			bounded(method, maxNameBytes), service, strings.Join(names, ", "))
	}
	return status.Errorf(codes.Unimplemented, "gpumesh: unknown service %s; this host serves %s",
		bounded(service, maxNameBytes), strings.Join(served, ", "))
}

// admit decides a call that needs only some right on the host (health,
// reflection), as Devices does.
func (s *Server) admit(ctx context.Context) error {
	if d := s.decideAdmits(callOf(ctx)); !d.Allow {
		return s.denied(d, "")
	}
	return nil
}

// reflectionV1 and reflectionV1alpha are gRPC's reflection services,
// behind the admission decision.
type reflectionV1 struct {
	s *Server
	reflectionpb.ServerReflectionServer
}

func (r reflectionV1) ServerReflectionInfo(stream reflectionpb.ServerReflection_ServerReflectionInfoServer) error {
	if err := r.s.admit(stream.Context()); err != nil {
		return err
	}
	return r.ServerReflectionServer.ServerReflectionInfo(stream)
}

type reflectionV1alpha struct {
	s *Server
	reflectionalphapb.ServerReflectionServer
}

func (r reflectionV1alpha) ServerReflectionInfo(stream reflectionalphapb.ServerReflection_ServerReflectionInfoServer) error {
	if err := r.s.admit(stream.Context()); err != nil {
		return err
	}
	return r.ServerReflectionServer.ServerReflectionInfo(stream)
}
