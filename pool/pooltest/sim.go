// Package pooltest holds test helpers for the pool: a simulated GPU
// backend (Sim) and a loopback stand-in for the overlay (Net) with GPU
// hosts on it, so that placement can be measured without CPU contention
// on a small machine. Neither is ever used by `gpumesh serve`; tests of
// the real path use overlay/overlaytest and the CPU backend.
package pooltest

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
)

// Sim is a SIMULATED GPU, for benchmarks and tests of placement only:
// each kernel call holds one of the device's Slots for Delay (as a kernel
// that takes that long would), computes nothing, and returns zeros of the
// kernel's output shape. Calls beyond Slots wait their turn, first come
// first served, as kernels queue on a GPU. Resident buffers are kept in
// memory.
type Sim struct {
	delay time.Duration
	slots chan struct{}

	mu      sync.Mutex
	running int               // guarded by mu
	waiting int               // guarded by mu
	calls   uint64            // finished calls; guarded by mu
	buffers map[uint64][]byte // guarded by mu
	next    uint64            // guarded by mu
}

var (
	_ gpusvc.Backend = (*Sim)(nil)
	_ gpusvc.Memory  = (*Sim)(nil)
)

// NewSim returns a simulated GPU whose kernels take delay each, slots of
// them at a time (a GPU running one kernel after another has 1).
func NewSim(delay time.Duration, slots int) *Sim {
	return &Sim{delay: delay, slots: make(chan struct{}, max(slots, 1)), buffers: make(map[uint64][]byte)}
}

// Info describes the simulated device, busy (100%) while a call holds it.
func (s *Sim) Info(context.Context) gpusvc.Info {
	s.mu.Lock()
	defer s.mu.Unlock()
	util := uint32(0)
	if s.running > 0 {
		util = 100
	}
	return gpusvc.Info{
		Backend: "simulator",
		Devices: []gpusvc.Device{{Index: 0, Name: fmt.Sprintf("SIMULATED GPU (%v per call)", s.delay), UtilizationPercent: util}},
		Status:  "simulated GPU for placement benchmarks: a fixed wait per call, no computation",
	}
}

// Compute waits for a slot, holds it for the delay, and returns zeros.
func (s *Sim) Compute(ctx context.Context, c gpusvc.Call) (kernel.Tensor, error) {
	s.mu.Lock()
	s.waiting++
	s.mu.Unlock()
	select {
	case s.slots <- struct{}{}:
	case <-ctx.Done():
		s.mu.Lock()
		s.waiting--
		s.mu.Unlock()
		return kernel.Tensor{}, ctx.Err()
	}
	s.mu.Lock()
	s.waiting--
	s.running++
	s.mu.Unlock()
	t := time.NewTimer(s.delay)
	var err error
	select {
	case <-t.C:
	case <-ctx.Done():
		t.Stop()
		err = ctx.Err()
	}
	<-s.slots
	s.mu.Lock()
	s.running--
	if err == nil {
		s.calls++
	}
	s.mu.Unlock()
	if err != nil {
		return kernel.Tensor{}, err
	}
	n := int64(1)
	for _, d := range c.OutShape {
		n *= d
	}
	return kernel.NewFloat32(c.OutShape, make([]float32, n)), nil
}

// Calls is the number of calls the device finished.
func (s *Sim) Calls() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// Load is the calls running and waiting on the device now.
func (s *Sim) Load() (running, waiting int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running, s.waiting
}

// maxSimMemory bounds what a simulated device holds.
const maxSimMemory = 1 << 30

// Alloc reserves n zeroed bytes.
func (s *Sim) Alloc(_ context.Context, _ int, n int64) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	held := int64(0)
	for _, b := range s.buffers {
		held += int64(len(b))
	}
	if n <= 0 || held+n > maxSimMemory {
		return 0, gpusvc.ErrOutOfMemory
	}
	s.next++
	s.buffers[s.next] = make([]byte, n)
	return s.next, nil
}

// Free releases a buffer.
func (s *Sim) Free(_ context.Context, h uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.buffers[h]; !ok {
		return gpusvc.ErrNoBuffer
	}
	delete(s.buffers, h)
	return nil
}

// WriteAt copies p into a buffer.
func (s *Sim) WriteAt(_ context.Context, h uint64, off int64, p []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.buffers[h]
	if !ok || off < 0 || off+int64(len(p)) > int64(len(b)) {
		return gpusvc.ErrNoBuffer
	}
	copy(b[off:], p)
	return nil
}

// ReadAt copies a buffer's bytes into p.
func (s *Sim) ReadAt(_ context.Context, h uint64, off int64, p []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.buffers[h]
	if !ok || off < 0 || off+int64(len(p)) > int64(len(b)) {
		return gpusvc.ErrNoBuffer
	}
	copy(p, b[off:])
	return nil
}

// Close frees every buffer.
func (s *Sim) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.buffers)
	return nil
}
