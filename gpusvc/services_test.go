package gpusvc_test

import (
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
)

// TestHealthAndReflection: the standard health service reports the host
// and each compute service SERVING to an admitted caller, refuses a
// stranger at admission, does not count a Watch as load, records its calls
// sparingly (every call counted, one record a minute per caller, method and
// outcome), and on a graceful stop tells its watchers NOT_SERVING and lets
// them go, so the stop does not wait for them. Reflection lists exactly
// the services an unknown one's error names (and v1alpha).
func TestHealthAndReflection(t *testing.T) {
	w := startWorldWith(t, doorPolicy, nil, "laptop", "stranger")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cc := w.conn(t, "laptop")
	health := healthpb.NewHealthClient(cc)

	const checks = 30
	t.Run("check", func(t *testing.T) {
		for _, svc := range []string{"", "gpumesh.v1.GPU", "cuda.CUDAService"} {
			res, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
			if err != nil || res.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Errorf("Check(%q) = %v, %v; want SERVING", svc, res.GetStatus(), err)
			}
		}
		for range checks - 3 {
			if _, err := health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
				t.Fatal(err)
			}
		}
		_, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: "foo.Bar"})
		wantCode(t, err, codes.NotFound, `no health reported for service "foo.Bar"; this host reports "" (itself), gpumesh.v1.GPU, cuda.CUDAService`)
		list, err := health.List(ctx, &healthpb.HealthListRequest{})
		if err != nil || len(list.GetStatuses()) != 3 || list.GetStatuses()["cuda.CUDAService"].GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("List = %v, %v; want the host and its two services SERVING", list, err)
		}
	})

	t.Run("a stranger is refused at admission", func(t *testing.T) {
		_, err := healthpb.NewHealthClient(w.conn(t, "stranger")).Check(ctx, &healthpb.HealthCheckRequest{})
		wantCode(t, err, codes.PermissionDenied, "denied by gpu-host's policy")
	})

	t.Run("unknown services and methods name what the host serves", func(t *testing.T) {
		err := cc.Invoke(ctx, "/foo.Bar/Baz", &healthpb.HealthCheckRequest{}, &healthpb.HealthCheckResponse{})
		const served = "gpumesh.v1.GPU, cuda.CUDAService, grpc.health.v1.Health, grpc.reflection.v1.ServerReflection"
		if status.Code(err) != codes.Unimplemented || status.Convert(err).Message() != "gpumesh: unknown service foo.Bar; this host serves "+served {
			t.Errorf("foo.Bar/Baz: %v", err)
		}
		err = cc.Invoke(ctx, "/gpumesh.v1.GPU/Nope", &pb.DevicesRequest{}, &pb.DevicesResponse{})
		wantCode(t, err, codes.Unimplemented, "unknown method Nope of gpumesh.v1.GPU; it has ")
		if msg := status.Convert(err).Message(); !strings.Contains(msg, "Compute") || !strings.Contains(msg, "LoadModule") {
			t.Errorf("gpumesh.v1.GPU/Nope: %q does not list the service's methods", msg)
		}
		// Reflection lists exactly those, and v1alpha for older clients.
		stream, err := reflectionpb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
			t.Fatal(err)
		}
		res, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		var listed []string
		for _, s := range res.GetListServicesResponse().GetService() {
			listed = append(listed, s.GetName())
		}
		want := append(strings.Split(served, ", "), "grpc.reflection.v1alpha.ServerReflection")
		slices.Sort(listed)
		slices.Sort(want)
		if !slices.Equal(listed, want) {
			t.Errorf("reflection lists %v; want %v", listed, want)
		}
		if err := stream.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
			t.Errorf("reflection stream after CloseSend: %v; want EOF", err)
		}
		if recs := w.recordsOf("laptop", "reflection"); len(recs) != 1 || !recs[0].Allow || recs[0].Rule != "laptop" {
			t.Errorf("reflection records %+v; want one, admitted under rule laptop", recs)
		}
	})

	watch, err := health.Watch(ctx, &healthpb.HealthCheckRequest{Service: "cuda.CUDAService"})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := watch.Recv(); err != nil || res.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Watch: %v, %v; want SERVING", res.GetStatus(), err)
	}

	t.Run("a watch is no load", func(t *testing.T) {
		dev, err := w.clients["laptop"].Devices(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if n := dev.GetLoad().GetCallsInFlight(); n != 1 {
			t.Errorf("calls in flight during Devices with a Watch open: %d; want 1 (Devices itself)", n)
		}
	})

	t.Run("graceful stop", func(t *testing.T) {
		stopped := make(chan struct{})
		go func() {
			defer close(stopped)
			w.srv.GracefulStop(context.Background()) // no deadline: a watcher that held it would hang the test
		}()
		if res, err := watch.Recv(); err != nil || res.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Fatalf("Watch during a graceful stop: %v, %v; want NOT_SERVING", res.GetStatus(), err)
		}
		if _, err := watch.Recv(); !errors.Is(err, io.EOF) {
			t.Errorf("Watch after NOT_SERVING: %v; want its end", err)
		}
		select {
		case <-stopped:
		case <-ctx.Done():
			t.Fatal("GracefulStop still waits")
		}
	})

	t.Run("recorded sparingly, every call counted", func(t *testing.T) {
		recs := w.recordsOf("laptop", "health.Check")
		var ok, notFound int64
		n := 0
		for _, r := range recs {
			switch r.Code {
			case codes.OK:
				ok += 1 + r.Suppressed
				n++
			case codes.NotFound:
				notFound += 1 + r.Suppressed
			}
		}
		if ok != checks || n > 2 || notFound != 1 {
			t.Errorf("health.Check records %+v: %d OK calls in %d records, %d NotFound; want %d in at most 2, and 1", recs, ok, n, notFound, checks)
		}
		if recs := w.recordsOf("laptop", "health.Watch"); len(recs) != 1 || recs[0].Code != codes.OK {
			t.Errorf("health.Watch records %+v; want one, OK", recs)
		}
	})
}
