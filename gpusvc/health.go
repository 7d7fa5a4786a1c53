package gpusvc

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/gpumesh/gpumesh/gpusvc/cudapb"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
)

// health is the standard gRPC health service, grpc.health.v1.Health, for
// grpc-health-probe, Kubernetes gRPC probes and clients' health checking.
// It reports the host as a whole ("") and each compute service by name:
// SERVING from NewServer until the server stops, NOT_SERVING from the
// moment Stop or GracefulStop begins. A Watch sends the status, then each
// change; when the server stops it sends NOT_SERVING and ends, so that a
// graceful stop never waits for a watcher.
//
// Probes come every few seconds, so its calls are recorded sparingly (see
// sampler); a caller the policy gives nothing is refused at admission.
type health struct {
	healthpb.UnimplementedHealthServer
	s *Server

	mu      sync.Mutex
	serving bool          // guarded by mu
	changed chan struct{} // closed at the next change; guarded by mu
}

// healthServices are the services whose health is reported: "" is the host.
var healthServices = []string{"", pb.GPU_ServiceDesc.ServiceName, cudapb.CUDAService_ServiceDesc.ServiceName}

func newHealth(s *Server) *health {
	return &health{s: s, serving: true, changed: make(chan struct{})}
}

// stop reports every service NOT_SERVING from now on, and ends watches.
func (h *health) stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.serving {
		h.serving = false
		close(h.changed)
	}
}

// current returns the status of service, and a channel closed at the next
// change (nil once the server has stopped: there is none).
func (h *health) current(service string) (healthpb.HealthCheckResponse_ServingStatus, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if h.serving {
		st = healthpb.HealthCheckResponse_SERVING
	}
	if !slices.Contains(healthServices, service) {
		st = healthpb.HealthCheckResponse_SERVICE_UNKNOWN
	}
	if !h.serving {
		return st, nil
	}
	return st, h.changed
}

// checkService bounds the name a request asks about.
func checkService(name string) error {
	if len(name) > maxNameBytes {
		return status.Errorf(codes.InvalidArgument, "gpumesh: service name of %d bytes; at most %d", len(name), maxNameBytes)
	}
	return nil
}

func (h *health) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	if err := h.s.admit(ctx); err != nil {
		return nil, err
	}
	if err := checkService(req.GetService()); err != nil {
		return nil, err
	}
	st, _ := h.current(req.GetService())
	if st == healthpb.HealthCheckResponse_SERVICE_UNKNOWN {
		return nil, status.Errorf(codes.NotFound, "gpumesh: no health reported for service %q; this host reports %q (itself), %s",
			bounded(req.GetService(), maxNameBytes), "", strings.Join(healthServices[1:], ", "))
	}
	return &healthpb.HealthCheckResponse{Status: st}, nil
}

func (h *health) List(ctx context.Context, _ *healthpb.HealthListRequest) (*healthpb.HealthListResponse, error) {
	if err := h.s.admit(ctx); err != nil {
		return nil, err
	}
	res := &healthpb.HealthListResponse{Statuses: make(map[string]*healthpb.HealthCheckResponse, len(healthServices))}
	for _, name := range healthServices {
		st, _ := h.current(name)
		res.Statuses[name] = &healthpb.HealthCheckResponse{Status: st}
	}
	return res, nil
}

func (h *health) Watch(req *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	ctx := stream.Context()
	if err := h.s.admit(ctx); err != nil {
		return err
	}
	if err := checkService(req.GetService()); err != nil {
		return err
	}
	last := healthpb.HealthCheckResponse_ServingStatus(-1)
	for {
		st, changed := h.current(req.GetService())
		if st != last {
			if err := stream.Send(&healthpb.HealthCheckResponse{Status: st}); err != nil {
				return err
			}
			last = st
		}
		if changed == nil {
			return nil // the server is stopping: NOT_SERVING was the last word
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}

// Health calls are recorded sparingly: a probe every few seconds from
// each kubelet or load balancer would otherwise be most of the audit log,
// and a health call reads nothing, runs nothing and holds nothing. Per
// caller, method and outcome (status code) the first call is recorded, and
// then at most one a minute, its Suppressed counting the calls since the
// last record; a new outcome (a probe that starts failing) is recorded at
// once. Counts not yet reported are written by the next record of any
// sampled call after a minute, and when the server stops.
const (
	sampleEvery   = time.Minute
	maxSampleKeys = 4096
)

// sampled reports whether a method's calls are recorded sparingly.
func sampled(method string) bool { return strings.HasPrefix(method, "health.") }

// emitCall writes a finished call's record: a sampled method's through
// the sampler.
func (s *Server) emitCall(c *call, r CallRecord) {
	if !sampled(c.method) || c.who == nil {
		s.emit(r)
		return
	}
	for _, r := range s.sampler.add(c.who.key, r) {
		s.emit(r)
	}
}

// sampler holds back the records of sampled calls.
type sampler struct {
	mu    sync.Mutex
	by    map[sampleKey]*sample // guarded by mu
	swept time.Time             // guarded by mu
}

type sampleKey struct {
	caller, method string
	code           codes.Code
}

// sample is one key's calls since its last record. Guarded by sampler.mu.
type sample struct {
	at         time.Time  // the last record written
	suppressed int64      // calls not recorded since
	last       CallRecord // the latest of them
}

func newSampler() *sampler { return &sampler{by: make(map[sampleKey]*sample)} }

// add takes the record of a call made by caller key, and returns what to
// write now: r itself (with the count of calls held back before it), the
// held-back counts of other keys due, or nothing.
func (sp *sampler) add(key string, r CallRecord) []CallRecord {
	now := time.Now()
	sp.mu.Lock()
	defer sp.mu.Unlock()
	var out []CallRecord
	if now.Sub(sp.swept) >= sampleEvery {
		out = sp.flushLocked(now, false)
		sp.swept = now
	}
	k := sampleKey{key, r.Method, r.Code}
	e := sp.by[k]
	if e == nil {
		if len(sp.by) >= maxSampleKeys {
			k = sampleKey{method: r.Method, code: r.Code} // counted with others from now on
			e = sp.by[k]
		}
		if e == nil {
			e = &sample{}
			sp.by[k] = e
		}
	}
	if e.at.IsZero() || now.Sub(e.at) >= sampleEvery {
		r.Suppressed, e.suppressed, e.at = e.suppressed, 0, now
		return append(out, r)
	}
	e.suppressed++
	e.last = r
	return out
}

// flushLocked returns a record for each key whose calls were held back
// for a minute (all of them when stopping), the latest standing for the
// others, and forgets keys idle for a minute.
func (sp *sampler) flushLocked(now time.Time, all bool) []CallRecord {
	var out []CallRecord
	for k, e := range sp.by {
		if e.suppressed > 0 && (all || now.Sub(e.at) >= sampleEvery) {
			r := e.last
			r.Suppressed = e.suppressed - 1
			e.suppressed, e.at = 0, now
			out = append(out, r)
		}
		if e.suppressed == 0 && now.Sub(e.at) >= sampleEvery {
			delete(sp.by, k)
		}
	}
	slices.SortFunc(out, func(a, b CallRecord) int { return a.Time.Compare(b.Time) })
	return out
}

// flush returns every held-back count, when the server stops.
func (sp *sampler) flush() []CallRecord {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return sp.flushLocked(time.Now(), true)
}
