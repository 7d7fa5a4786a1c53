//go:build !linux || !cgo

package nvml

import "fmt"

// Monitor is an initialised NVML; without cgo there is none.
type Monitor struct{}

// Open reports that this build cannot load NVML.
func Open() (*Monitor, error) {
	return nil, fmt.Errorf("nvml: %w: this gpumesh was built without cgo (or not for linux) and cannot load libnvidia-ml", ErrNoDriver)
}

// Close does nothing.
func (m *Monitor) Close() error { return nil }

// Report is never reached: Open fails.
func (m *Monitor) Report() (Report, error) { return Report{}, fmt.Errorf("nvml: %w", ErrNoDriver) }

// FindNVRTC reports that this build cannot load libraries.
func FindNVRTC() (string, error) {
	return "", fmt.Errorf("nvml: no NVRTC: this gpumesh was built without cgo")
}
