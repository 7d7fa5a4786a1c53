package pool

import (
	"strconv"
	"time"

	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
)

// Load is how busy a host says it is, from its answer to Devices: the
// figures placement weighs besides what the pool itself has in flight
// there.
type Load struct {
	// Reported is true when the host reports its calls, sessions and
	// memory (InFlight through MemoryBudget); a host that reports only its
	// GPUs leaves them zero, and placement then knows of no other
	// callers' work there.
	Reported bool `json:"reported"`
	// InFlight and Queued are the calls running and waiting on the host,
	// every caller's.
	InFlight int `json:"in_flight"`
	Queued   int `json:"queued"`
	// Sessions are the sessions open on the host, every caller's.
	Sessions int `json:"sessions"`
	// MemoryHeld is the bytes of resident buffers the host holds, against
	// its MemoryBudget (0: none set).
	MemoryHeld   uint64 `json:"memory_held_bytes"`
	MemoryBudget uint64 `json:"memory_budget_bytes,omitempty"`
	// GPUs are the host's devices with their telemetry.
	GPUs []GPU `json:"gpus"`
	// Age is how old the host's figures were when it answered (it caches
	// its telemetry rather than asking the driver on every Devices); 0
	// when it does not say.
	Age time.Duration `json:"age_ns,omitempty"`
}

// GPU is one of a host's devices as it describes it, with its telemetry.
type GPU struct {
	Index              uint32 `json:"index"`
	UUID               string `json:"uuid,omitempty"`
	Name               string `json:"name"`
	UtilizationPercent uint32 `json:"utilization_percent"`
	// MemoryTotal is 0 where the backend does not know it (the CPU
	// backend); MemoryFree is then 0 too.
	MemoryTotal   uint64 `json:"memory_total"`
	MemoryFree    uint64 `json:"memory_free"`
	DriverVersion string `json:"driver_version,omitempty"`
	CUDAVersion   string `json:"cuda_version,omitempty"`
}

// Queue is every caller's calls on the host, running and waiting.
func (l Load) Queue() int { return l.InFlight + l.Queued }

// Utilization is the busiest GPU's utilisation (gpu "" or not found), or
// that of the GPU named by its index or UUID.
func (l Load) Utilization(gpu string) uint32 {
	if g, ok := l.gpu(gpu); ok {
		return g.UtilizationPercent
	}
	var u uint32
	for _, g := range l.GPUs {
		u = max(u, g.UtilizationPercent)
	}
	return u
}

// MemoryFree is the free memory of the GPU named (or, for "", the GPU
// with the most), and whether the host knows it.
func (l Load) MemoryFree(gpu string) (uint64, bool) {
	if g, ok := l.gpu(gpu); ok {
		return g.MemoryFree, g.MemoryTotal > 0
	}
	var free uint64
	known := false
	for _, g := range l.GPUs {
		if g.MemoryTotal > 0 {
			free, known = max(free, g.MemoryFree), true
		}
	}
	return free, known
}

func (l Load) gpu(name string) (GPU, bool) {
	if name == "" {
		return GPU{}, false
	}
	for _, g := range l.GPUs {
		if g.UUID == name || strconv.FormatUint(uint64(g.Index), 10) == name {
			return g, true
		}
	}
	return GPU{}, false
}

// LoadOf reads a host's load and GPUs from its Devices answer: the one
// place the wire's load and device fields are read (kube's GPU hosts read
// their devices through it too). A host that sends no load message (an
// older gpumesh) reports its GPUs only, and Reported stays false.
func LoadOf(d *pb.DevicesResponse) Load {
	var l Load
	if w := d.GetLoad(); w != nil {
		l.Reported = true
		l.InFlight = int(max(w.GetCallsInFlight(), 0))
		l.Queued = int(max(w.GetCallsQueued(), 0))
		l.Sessions = int(max(w.GetSessions(), 0))
		l.MemoryHeld = uint64(max(w.GetMemoryHeldBytes(), 0))
		l.MemoryBudget = uint64(max(w.GetMemoryBudgetBytes(), 0))
		l.Age = time.Duration(max(w.GetTelemetryAgeMs(), 0)) * time.Millisecond
	}
	for _, x := range d.GetDevices() {
		g := GPU{
			Index: x.GetIndex(), UUID: x.GetUuid(), Name: x.GetName(),
			UtilizationPercent: min(x.GetUtilizationPercent(), 100),
			MemoryTotal:        x.GetMemoryTotal(),
			DriverVersion:      x.GetDriverVersion(), CUDAVersion: x.GetCudaVersion(),
		}
		if g.MemoryTotal > 0 && x.GetMemoryUsed() <= g.MemoryTotal {
			g.MemoryFree = g.MemoryTotal - x.GetMemoryUsed()
		}
		l.GPUs = append(l.GPUs, g)
	}
	return l
}
