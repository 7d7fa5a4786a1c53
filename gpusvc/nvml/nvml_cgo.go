//go:build linux && cgo

package nvml

import (
	"fmt"
	"strings"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/dl"
	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
)

// library is NVML's shared object, as the driver installs it.
const library = "libnvidia-ml.so.1"

// Monitor is an initialised NVML. It is safe for concurrent use.
type Monitor struct {
	mu     sync.Mutex
	closed bool // guarded by mu
}

// Open loads and initialises NVML.
func Open() (*Monitor, error) {
	// Try the library first: go-nvml's Init reports a missing library only
	// as "not found", dlopen says why.
	lib := dl.New(library, dl.RTLD_LAZY|dl.RTLD_GLOBAL)
	if err := lib.Open(); err != nil {
		return nil, fmt.Errorf("nvml: %w: %v", ErrNoDriver, err)
	}
	defer lib.Close()
	if ret := gonvml.Init(); ret != gonvml.SUCCESS {
		return nil, fmt.Errorf("nvml: %w: init: %v", ErrNoDriver, ret)
	}
	return &Monitor{}, nil
}

// Close shuts NVML down. A second Close does nothing.
func (m *Monitor) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	if ret := gonvml.Shutdown(); ret != gonvml.SUCCESS {
		return fmt.Errorf("nvml: shutdown: %v", ret)
	}
	return nil
}

// Report reads the driver's versions and every GPU's telemetry.
func (m *Monitor) Report() (Report, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return Report{}, fmt.Errorf("nvml: report: monitor closed")
	}
	var r Report
	if v, ret := gonvml.SystemGetDriverVersion(); ret == gonvml.SUCCESS {
		r.DriverVersion = v
	}
	if v, ret := gonvml.SystemGetCudaDriverVersion(); ret == gonvml.SUCCESS {
		r.CUDAVersion = cudaVersion(v)
	}
	if v, ret := gonvml.SystemGetNVMLVersion(); ret == gonvml.SUCCESS {
		r.NVMLVersion = v
	}
	n, ret := gonvml.DeviceGetCount()
	if ret != gonvml.SUCCESS {
		return r, fmt.Errorf("nvml: device count: %v", ret)
	}
	for i := range n {
		d, err := device(i)
		if err != nil {
			return r, err
		}
		r.Devices = append(r.Devices, d)
	}
	return r, nil
}

// device reads GPU i. Name and UUID are required; the readings are not.
func device(i int) (Device, error) {
	h, ret := gonvml.DeviceGetHandleByIndex(i)
	if ret != gonvml.SUCCESS {
		return Device{}, fmt.Errorf("nvml: gpu %d: %v", i, ret)
	}
	d := Device{Index: i}
	if d.Name, ret = h.GetName(); ret != gonvml.SUCCESS {
		return Device{}, fmt.Errorf("nvml: gpu %d: name: %v", i, ret)
	}
	if d.UUID, ret = h.GetUUID(); ret != gonvml.SUCCESS {
		return Device{}, fmt.Errorf("nvml: gpu %d: uuid: %v", i, ret)
	}
	missing := func(what string, ret gonvml.Return) {
		d.Unsupported = append(d.Unsupported, fmt.Sprintf("%s (%v)", what, ret))
	}
	if mem, ret := h.GetMemoryInfo(); ret == gonvml.SUCCESS {
		d.MemoryTotal, d.MemoryUsed = mem.Total, mem.Used
	} else {
		missing("memory", ret)
	}
	if u, ret := h.GetUtilizationRates(); ret == gonvml.SUCCESS {
		d.UtilizationPercent = u.Gpu
	} else {
		missing("utilization", ret)
	}
	if t, ret := h.GetTemperature(gonvml.TEMPERATURE_GPU); ret == gonvml.SUCCESS {
		d.TemperatureC = int32(t)
	} else {
		missing("temperature", ret)
	}
	if p, ret := h.GetPowerUsage(); ret == gonvml.SUCCESS {
		d.PowerMW = p
	} else {
		missing("power", ret)
	}
	return d, nil
}

// FindNVRTC returns the first NVRTC library (CUDA's run-time compiler,
// which custom CUDA C needs) that loads on this machine.
func FindNVRTC() (string, error) {
	var errs []string
	for _, name := range NVRTCNames {
		lib := dl.New(name, dl.RTLD_LAZY|dl.RTLD_LOCAL)
		if err := lib.Open(); err != nil {
			errs = append(errs, err.Error())
			continue
		}
		lib.Close()
		return name, nil
	}
	return "", fmt.Errorf("nvml: no NVRTC library loads: %s", strings.Join(errs, "; "))
}
