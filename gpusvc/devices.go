package gpusvc

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/policy"
)

// device is a GPU by its canonical names: the policy is asked about the
// index and the UUID together, so a rule may name either and means the
// same device whichever a caller names.
type device struct {
	index int
	name  string // strconv.Itoa(index): what requests and records carry
	uuid  string // "" when the backend reports none
}

// infoTTL is how long the backend's telemetry is reused: Devices answers
// from it without asking a worker on every call.
const infoTTL = time.Second

// devices is the backend's device list, fixed when the server starts, and
// its telemetry, refreshed at most every infoTTL.
type devices struct {
	backend Backend
	list    []device

	mu   sync.Mutex // held while refreshing, so that one caller asks
	info Info       // guarded by mu
	at   time.Time  // when info was fetched; guarded by mu
}

func newDevices(ctx context.Context, b Backend) *devices {
	info := b.Info(ctx)
	d := &devices{backend: b, info: info, at: time.Now()}
	for _, dev := range info.Devices {
		d.list = append(d.list, device{index: dev.Index, name: strconv.Itoa(dev.Index), uuid: dev.UUID})
	}
	slices.SortFunc(d.list, func(a, b device) int { return a.index - b.index })
	return d
}

// resolve turns a request's GPU name into the device: "" is the first
// device; an index may be written with a sign or leading zeros ("00",
// "+0", "-0" are device 0); anything else must be a device's UUID (any
// case). Anything that names no device is InvalidArgument.
func (d *devices) resolve(name string) (device, error) {
	if len(name) > maxNameBytes {
		return device{}, status.Errorf(codes.InvalidArgument, "gpumesh: gpu name of %d bytes; at most %d", len(name), maxNameBytes)
	}
	if len(d.list) == 0 { // a backend that reports no device serves one, 0
		if i, ok := parseIndex(name); ok && i == 0 || name == "" {
			return device{name: "0"}, nil
		}
		return device{}, noGPU(name, d.list)
	}
	if name == "" {
		return d.list[0], nil
	}
	if i, ok := parseIndex(name); ok {
		for _, dev := range d.list {
			if dev.index == i {
				return dev, nil
			}
		}
		return device{}, noGPU(name, d.list)
	}
	for _, dev := range d.list {
		if dev.uuid != "" && strings.EqualFold(dev.uuid, name) {
			return dev, nil
		}
	}
	return device{}, noGPU(name, d.list)
}

// parseIndex reads a decimal index with an optional sign; -0 is 0.
func parseIndex(s string) (int, bool) {
	digits := strings.TrimLeft(s, "+-")
	if len(s)-len(digits) > 1 || digits == "" || strings.Trim(digits, "0123456789") != "" {
		return 0, false
	}
	i, err := strconv.ParseInt(s, 10, 32)
	if err != nil {
		return -1, true // out of range: a number, but no device
	}
	if i == 0 {
		return 0, true
	}
	return int(i), true
}

func noGPU(name string, list []device) error {
	have := make([]string, 0, len(list))
	for _, d := range list {
		have = append(have, d.name)
	}
	if len(have) == 0 {
		have = []string{"0"}
	}
	return status.Errorf(codes.InvalidArgument, "gpumesh: no gpu %q on this host (it has %s, by index or UUID)", bounded(name, 40), strings.Join(have, ", "))
}

// current returns the backend's telemetry, at most infoTTL old, and its age.
func (d *devices) current(ctx context.Context) (Info, time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if age := time.Since(d.at); age < infoTTL {
		return d.info, age
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	d.info, d.at = d.backend.Info(ctx), time.Now()
	return d.info, 0
}

// Load is what a host is doing now: the figures Devices reports, for
// placing work on the least loaded host.
type Load struct {
	CallsInFlight int // calls running, every caller
	CallsQueued   int // stream calls waiting for a slot
	Conns         int // open connections
	Streams       int // open RPCs
	Sessions      int
	Buffers       int
	MemoryHeld    int64 // bytes of resident buffers and kernel outputs
	MemoryBudget  int64 // the host's cap on MemoryHeld
}

// Load reports the host's current work from its counters.
func (s *Server) Load() Load {
	sessions, buffers := s.sessions.count()
	held, budget := s.quotas.memory()
	conns, streams := s.admission.open()
	return Load{
		CallsInFlight: int(s.inFlight.Load()), CallsQueued: int(s.queued.Load()), Conns: conns, Streams: streams,
		Sessions: sessions, Buffers: buffers, MemoryHeld: held, MemoryBudget: budget,
	}
}

// Devices describes the backend and its devices, the caller's limits, the
// host's load and the version of the policy in force.
func (s *Server) Devices(ctx context.Context, _ *pb.DevicesRequest) (*pb.DevicesResponse, error) {
	c := callOf(ctx)
	d := s.decideAdmits(c)
	if !d.Allow {
		return nil, s.denied(d, "")
	}
	info, age := s.devices.current(ctx)
	res := &pb.DevicesResponse{
		Backend: info.Backend, Host: s.cfg.Host, Caller: c.who.name, Status: info.Status, Nvrtc: info.NVRTC,
		Limits: s.limitsPB(d.Limits), PolicyVersion: s.policy().Digest(),
	}
	for _, d := range info.Devices {
		res.Devices = append(res.Devices, &pb.Device{
			Index: uint32(d.Index), Uuid: d.UUID, Name: d.Name, MemoryTotal: d.MemoryTotal, MemoryUsed: d.MemoryUsed,
			UtilizationPercent: d.UtilizationPercent, TemperatureC: d.TemperatureC, PowerMw: d.PowerMW,
			DriverVersion: d.DriverVersion, CudaVersion: d.CUDAVersion,
		})
	}
	l := s.Load()
	res.Load = &pb.Load{
		CallsInFlight: int32(l.CallsInFlight), CallsQueued: int32(l.CallsQueued), Conns: int32(l.Conns), Streams: int32(l.Streams),
		Sessions: int32(l.Sessions), Buffers: int32(l.Buffers), MemoryHeldBytes: l.MemoryHeld, MemoryBudgetBytes: l.MemoryBudget,
		TelemetryAgeMs: age.Milliseconds(),
	}
	return res, nil
}

// limitsPB is a caller's limits as Devices reports them: max_request_bytes
// is the cap in force, and stream_window what one Stream may hold.
func (s *Server) limitsPB(l policy.Limits) *pb.Limits {
	maxReq := s.cfg.MaxRequestBytes
	if l.MaxRequestBytes > 0 {
		maxReq = min(maxReq, l.MaxRequestBytes)
	}
	return &pb.Limits{
		MaxMemory: l.MaxMemory, MaxConcurrent: int32(l.MaxConcurrent), Rate: l.Rate, Burst: int32(l.Burst),
		MaxRequestBytes: maxReq, IdleTimeoutMs: l.IdleTimeout.Milliseconds(), StreamWindow: int32(2 * s.streamRunners(l)),
	}
}

// Explain tells the caller how the policy decides for them, under which
// policy version, and which capabilities the host sees them hold.
func (s *Server) Explain(ctx context.Context, req *pb.ExplainRequest) (*pb.ExplainResponse, error) {
	c := callOf(ctx)
	var err error
	if c.kernel, err = checkName("kernel", req.GetKernel()); err != nil {
		return nil, err
	}
	dev, err := c.resolveGPU(s, req.GetGpu())
	if err != nil {
		return nil, err
	}
	if a := s.decideAdmits(c); !a.Allow {
		return nil, s.denied(a, "")
	}
	// One policy decides and names the version: a reload in between must
	// not pair a new version with an old answer.
	p := s.policy()
	d := p.Evaluate(c.who.subject, policy.Request{Kernel: req.GetKernel(), GPU: dev.name, GPUUUID: dev.uuid})
	return &pb.ExplainResponse{
		Allow: d.Allow, Rule: d.Rule, Reason: d.Reason, Class: d.Class, Caller: c.who.name, PolicyVersion: p.Digest(),
		Limits: &pb.Limits{
			MaxMemory: d.Limits.MaxMemory, MaxConcurrent: int32(d.Limits.MaxConcurrent), Rate: d.Limits.Rate,
			Burst: int32(d.Limits.Burst), MaxRequestBytes: d.Limits.MaxRequestBytes, IdleTimeoutMs: d.Limits.IdleTimeout.Milliseconds(),
		},
		Capabilities: capabilitiesPB(c.who.id),
	}, nil
}

// Bounds on the capabilities Explain echoes back.
const (
	maxCapsShown     = 32
	maxCapValues     = 16
	maxCapValueBytes = 1024
)

func capabilitiesPB(id overlay.Identity) []*pb.Capability {
	names := make([]string, 0, len(id.Caps))
	for n := range id.Caps {
		names = append(names, n)
	}
	slices.Sort(names)
	var out []*pb.Capability
	for _, n := range names[:min(len(names), maxCapsShown)] {
		c := &pb.Capability{Name: bounded(n, maxNameBytes)}
		for _, v := range id.Caps[n][:min(len(id.Caps[n]), maxCapValues)] {
			c.Values = append(c.Values, bounded(string(v), maxCapValueBytes))
		}
		out = append(out, c)
	}
	return out
}
