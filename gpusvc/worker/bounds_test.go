package worker_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/worker"
	"github.com/gpumesh/gpumesh/gpusvc/worker/standin"
)

// Finding 9: the supervisor started one worker per GPU per identity, with
// no bound. Now a GPU runs MaxWorkersPerGPU at most: a new caller takes the
// place of an idle worker holding no buffer, or is told the GPU is busy.
func TestWorkersBoundedPerGPU(t *testing.T) {
	s := startStandIn(t, func(c *worker.Config) { c.MaxWorkersPerGPU = 2 })
	ev := watch(s)
	carol := func() context.Context { return gpusvc.WithCaller(context.Background(), "carol") }
	// The start-up worker (no caller) and alice's, holding a buffer.
	if _, err := s.Alloc(alice(), 0, 8); err != nil {
		t.Fatal(err)
	}
	// bob's worker takes the idle start-up worker's place.
	if err := relu(t, s, bob()); err != nil {
		t.Fatal(err)
	}
	ev.wait(t, "reaped", worker.Key{})
	bobBuf, err := s.Alloc(bob(), 0, 8)
	if err != nil {
		t.Fatal(err)
	}
	// Both workers hold buffers: carol must wait.
	err = relu(t, s, carol())
	if !errors.Is(err, gpusvc.ErrBusy) {
		t.Fatalf("a third caller on a GPU capped at 2 busy workers: %v; want ErrBusy", err)
	}
	if st := s.Stats(); st.Live != 2 {
		t.Errorf("%d workers live; want 2", st.Live)
	}
	// bob frees his buffer: his idle worker makes room for carol.
	if err := s.Free(bob(), bobBuf); err != nil {
		t.Fatal(err)
	}
	if err := relu(t, s, carol()); err != nil {
		t.Fatalf("carol once bob's worker is idle: %v", err)
	}
	ev.wait(t, "reaped", bobKey)
}

// Finding 9: the supervisor kept every module source a caller ever loaded,
// for ever. Now a caller's slot keeps the most recent MaxKeptModules; an
// older module is loaded again by the caller after a restart, and a slot
// whose worker is gone without a recent crash is forgotten.
func TestModuleSourcesBounded(t *testing.T) {
	s := startStandIn(t, func(c *worker.Config) {
		c.IdleTimeout = 20 * time.Millisecond
		c.CrashWindow, c.MaxBackoff = time.Millisecond, time.Millisecond
	})
	ev := watch(s)
	const n = worker.MaxKeptModules + 6
	ids := make([]string, n)
	for i := range ids {
		id, _, _, err := s.LoadModule(alice(), 0, gpusvc.ModuleSource{PTX: []byte(fmt.Sprintf("// module %d", i))})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id
	}
	if k := worker.KeptModules(s, aliceKey); k != worker.MaxKeptModules {
		t.Fatalf("%d module sources kept after %d loads; want %d", k, n, worker.MaxKeptModules)
	}
	// Crash alice's worker: her recent modules come back, the oldest not.
	h, err := s.Alloc(alice(), 0, 4) // keeps the worker from the idle reaper
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Launch(alice(), gpusvc.Launch{Module: ids[n-1], Function: standin.FuncExit}); err == nil {
		t.Fatal("the exiting launch succeeded")
	}
	ev.wait(t, "crashed", aliceKey)
	s.Free(alice(), h)
	if err := s.Launch(alice(), gpusvc.Launch{Module: ids[n-1], Function: standin.FuncNop}); err != nil {
		t.Errorf("a kept module after the restart: %v", err)
	}
	err = s.Launch(alice(), gpusvc.Launch{Module: ids[0], Function: standin.FuncNop})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("a module no longer kept after the restart: %v; want FailedPrecondition (load it again)", err)
	}
	// Idle, no buffer, no recent crash: the worker is reaped and the slot,
	// with its sources, forgotten.
	ev.wait(t, "reaped", aliceKey)
	tick := time.NewTicker(10 * time.Millisecond) // the reaper prunes on its ticks
	defer tick.Stop()
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	for worker.HasSlot(s, aliceKey) {
		select {
		case <-tick.C:
		case <-timeout.C:
			t.Fatal("alice's slot is kept after her worker was reaped")
		}
	}
}
