package pool

import (
	"testing"
	"time"

	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
)

func TestLoadOf(t *testing.T) {
	l := LoadOf(&pb.DevicesResponse{Devices: []*pb.Device{
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

func TestLoadOfReported(t *testing.T) {
	l := LoadOf(&pb.DevicesResponse{
		Devices: []*pb.Device{{Index: 0, Name: "CPU"}},
		Load: &pb.Load{CallsInFlight: 3, CallsQueued: 7, Sessions: 2, MemoryHeldBytes: 1 << 20,
			MemoryBudgetBytes: 1 << 30, TelemetryAgeMs: 250},
	})
	want := Load{Reported: true, InFlight: 3, Queued: 7, Sessions: 2, MemoryHeld: 1 << 20, MemoryBudget: 1 << 30, Age: 250 * time.Millisecond}
	if l.Reported != want.Reported || l.InFlight != want.InFlight || l.Queued != want.Queued || l.Sessions != want.Sessions ||
		l.MemoryHeld != want.MemoryHeld || l.MemoryBudget != want.MemoryBudget || l.Age != want.Age || len(l.GPUs) != 1 {
		t.Errorf("LoadOf = %+v, want %+v with one GPU", l, want)
	}
	// A hostile or broken host's negative figures read as zero, never as
	// huge unsigned numbers that would skew placement.
	l = LoadOf(&pb.DevicesResponse{Load: &pb.Load{CallsQueued: -5, MemoryHeldBytes: -1, TelemetryAgeMs: -9}})
	if l.Queued != 0 || l.MemoryHeld != 0 || l.Age != 0 {
		t.Errorf("negative load figures = %+v, want zeros", l)
	}
}
