package pool

import (
	"testing"

	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
)

func TestLoadOf(t *testing.T) {
	l := loadOf(&pb.DevicesResponse{Devices: []*pb.Device{
		{Index: 0, Uuid: "GPU-a", Name: "A100", MemoryTotal: 80 << 30, MemoryUsed: 30 << 30, UtilizationPercent: 40, CudaVersion: "12.4"},
		{Index: 1, Uuid: "GPU-b", Name: "A100", MemoryTotal: 80 << 30, MemoryUsed: 70 << 30, UtilizationPercent: 95},
		{Index: 2, Name: "CPU", MemoryUsed: 1 << 20, UtilizationPercent: 250}, // no total: memory unknown
	}})
	if l.Reported {
		t.Error("a Devices answer without load fields is marked Reported")
	}
	if u := l.Utilization(""); u != 100 {
		t.Errorf("busiest GPU at %d%%, want 100 (clamped)", u)
	}
	if u := l.Utilization("GPU-a"); u != 40 {
		t.Errorf("GPU-a at %d%%, want 40", u)
	}
	if u := l.Utilization("1"); u != 95 {
		t.Errorf("gpu 1 at %d%%, want 95", u)
	}
	if f, ok := l.MemoryFree(""); !ok || f != 50<<30 {
		t.Errorf("most free memory = %d, %v; want 50GiB", f, ok)
	}
	if f, ok := l.MemoryFree("2"); ok || f != 0 {
		t.Errorf("gpu 2's free memory = %d, %v; want unknown", f, ok)
	}
	if l.GPUs[0].CUDAVersion != "12.4" {
		t.Errorf("GPU 0: %+v", l.GPUs[0])
	}
}
