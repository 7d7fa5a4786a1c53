// Package nvml reads NVIDIA GPU telemetry through NVML, the driver's
// management library (libnvidia-ml.so.1), which github.com/NVIDIA/go-nvml
// loads at run time. A binary importing this package starts and runs on
// machines without a driver: Open and Probe then return an error wrapping
// ErrNoDriver that says why, and never panic.
//
// nvml needs cgo (for dlopen); built without it, every probe reports
// ErrNoDriver with that reason. It imports nothing else of gpumesh.
package nvml

import (
	"errors"
	"fmt"
)

// ErrNoDriver means NVML could not be used: no NVIDIA driver, no GPU, or a
// binary built without cgo. The wrapping error says which.
var ErrNoDriver = errors.New("no NVIDIA driver")

// Report is what NVML says about this machine's GPUs.
type Report struct {
	DriverVersion string // "550.54.15"
	CUDAVersion   string // the newest CUDA the driver supports, "12.4"
	NVMLVersion   string
	Devices       []Device
}

// Device is one GPU and its live telemetry. A reading the GPU does not
// support is left zero and named in Unsupported.
type Device struct {
	Index              int
	UUID               string // "GPU-…"
	Name               string
	MemoryTotal        uint64 // bytes
	MemoryUsed         uint64 // bytes
	UtilizationPercent uint32
	TemperatureC       int32
	PowerMW            uint32
	Unsupported        []string `json:",omitempty"` // readings NVML did not give, e.g. "power"
}

// NVRTCNames are the NVRTC sonames FindNVRTC tries, newest CUDA first.
var NVRTCNames = []string{"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so"}

// Probe opens NVML, reads a report and closes it again. Long-lived users
// (a server answering Devices) should Open once instead: initialising NVML
// can take a while.
func Probe() (Report, error) {
	m, err := Open()
	if err != nil {
		return Report{}, err
	}
	defer m.Close()
	return m.Report()
}

// cudaVersion formats NVML's CUDA driver version (12040) as "12.4".
func cudaVersion(v int) string {
	if v <= 0 {
		return ""
	}
	return fmt.Sprintf("%d.%d", v/1000, v%1000/10)
}
