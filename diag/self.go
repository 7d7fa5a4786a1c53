package diag

import (
	"context"
	"net"
	"strconv"

	"github.com/gpumesh/gpumesh/gpusvc"
)

// On a GPU host, `gpumesh status` lists the host itself among the GPU
// hosts: its local API reports the host's own endpoint in Report.Self.GPU,
// read from the backend in the process rather than over the tailnet.

// A SelfFunc reports this node's own compute endpoint, nil when it serves
// none.
type SelfFunc func(ctx context.Context) *GPUHost

// SetSelf makes the local API's status report this node's own endpoint as
// f returns it; nil stops it.
func (a *LocalAPI) SetSelf(f SelfFunc) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.self = f
}

func (a *LocalAPI) selfFunc() SelfFunc {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.self
}

// SelfGPUHost describes the endpoint a host named name serves on port
// from its backend's info.
func SelfGPUHost(name string, port int, info gpusvc.Info) *GPUHost {
	g := &GPUHost{Endpoint: net.JoinHostPort(name, strconv.Itoa(port)), Backend: info.Backend, Host: name,
		SeesUsAs: name, Status: info.Status, Devices: []Device{}}
	for _, d := range info.Devices {
		g.Devices = append(g.Devices, Device{
			Index: uint32(d.Index), Name: d.Name, UUID: d.UUID, MemoryTotal: d.MemoryTotal, MemoryUsed: d.MemoryUsed,
			Utilization: d.UtilizationPercent, Temperature: d.TemperatureC, PowerMW: d.PowerMW,
			Driver: d.DriverVersion, CUDA: d.CUDAVersion,
		})
	}
	return g
}
