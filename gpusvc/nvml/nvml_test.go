package nvml

import (
	"errors"
	"strings"
	"testing"
)

// TestProbe runs everywhere: without a driver Probe must fail cleanly with
// ErrNoDriver and a reason; with one it must describe every GPU.
func TestProbe(t *testing.T) {
	r, err := Probe()
	if err != nil {
		if !errors.Is(err, ErrNoDriver) {
			t.Fatalf("Probe: %v; want an error wrapping ErrNoDriver", err)
		}
		if !strings.Contains(err.Error(), "no NVIDIA driver: ") {
			t.Errorf("Probe error %q gives no reason", err)
		}
		t.Logf("no driver here: %v", err)
		return
	}
	t.Logf("driver %s, CUDA %s, NVML %s", r.DriverVersion, r.CUDAVersion, r.NVMLVersion)
	if r.DriverVersion == "" {
		t.Error("no driver version")
	}
	for _, d := range r.Devices {
		t.Logf("%+v", d)
		if d.Name == "" || !strings.HasPrefix(d.UUID, "GPU-") {
			t.Errorf("gpu %d: name %q uuid %q", d.Index, d.Name, d.UUID)
		}
		if d.MemoryTotal == 0 || d.MemoryUsed > d.MemoryTotal {
			t.Errorf("gpu %d: memory %d used of %d", d.Index, d.MemoryUsed, d.MemoryTotal)
		}
		if d.UtilizationPercent > 100 {
			t.Errorf("gpu %d: utilization %d%%", d.Index, d.UtilizationPercent)
		}
	}
	// A second probe works too (NVML is initialised and shut down again).
	if _, err := Probe(); err != nil {
		t.Fatalf("second Probe: %v", err)
	}
}

func TestCUDAVersion(t *testing.T) {
	for _, tc := range []struct {
		in   int
		want string
	}{{12040, "12.4"}, {11080, "11.8"}, {13000, "13.0"}, {12090, "12.9"}, {0, ""}} {
		if got := cudaVersion(tc.in); got != tc.want {
			t.Errorf("cudaVersion(%d) = %q; want %q", tc.in, got, tc.want)
		}
	}
}
