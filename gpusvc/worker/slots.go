package worker

import (
	"container/list"
	"context"
	"fmt"
	"net"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc"
)

// Slots: one per key (GPU, caller) that has a worker, is starting one, or
// crashed recently. A slot keeps the modules its caller loaded, so that a
// restarted worker gets them again on first use, but only the most recent
// maxKeptModules (and maxKeptBytes of source) per key; a slot whose worker
// stopped without a crash, or whose last crash is long past, is forgotten
// with its modules.

// Bounds on the module sources a slot keeps.
const (
	maxKeptModules = 64
	maxKeptBytes   = 32 << 20
)

// slot is one key's worker and its crash history. Guarded by Supervisor.mu.
type slot struct {
	cur        *proc
	starting   chan struct{} // closed when a start in progress ends
	crashes    int           // in a row
	lastCrash  time.Time
	lastReason string
	modules    keptModules // loaded by this key, reloaded after a restart
}

// keptModules are module sources by ID, least recently used first out.
type keptModules struct {
	byID  map[string]*list.Element // of *keptModule
	order list.List                // front: most recently used
	bytes int
}

type keptModule struct {
	id  string
	src gpusvc.ModuleSource
}

func (m *keptModules) size(src gpusvc.ModuleSource) int { return len(src.PTX) + len(src.CUDA) }

// keep adds or refreshes a module, dropping the least recently used ones
// beyond the bounds.
func (m *keptModules) keep(id string, src gpusvc.ModuleSource) {
	if m.byID == nil {
		m.byID = make(map[string]*list.Element)
	}
	if e, ok := m.byID[id]; ok {
		m.order.MoveToFront(e)
		return
	}
	m.byID[id] = m.order.PushFront(&keptModule{id: id, src: src})
	m.bytes += m.size(src)
	for m.order.Len() > maxKeptModules || m.bytes > maxKeptBytes && m.order.Len() > 1 {
		e := m.order.Back()
		km := m.order.Remove(e).(*keptModule)
		delete(m.byID, km.id)
		m.bytes -= m.size(km.src)
	}
}

// get returns a kept module's source, marking it used.
func (m *keptModules) get(id string) (gpusvc.ModuleSource, bool) {
	e, ok := m.byID[id]
	if !ok {
		return gpusvc.ModuleSource{}, false
	}
	m.order.MoveToFront(e)
	return e.Value.(*keptModule).src, true
}

func (m *keptModules) len() int { return m.order.Len() }

func (s *Supervisor) slotOf(k Key) *slot {
	sl := s.slots[k]
	if sl == nil {
		sl = &slot{}
		s.slots[k] = sl
	}
	return sl
}

// pruneLocked forgets slots with no worker, no start in progress and no
// crash within the backoff's reach: their callers start afresh.
func (s *Supervisor) pruneLocked() {
	forget := max(s.cfg.CrashWindow, s.cfg.MaxBackoff)
	for k, sl := range s.slots {
		if sl.cur == nil && sl.starting == nil && (sl.crashes == 0 || time.Since(sl.lastCrash) > forget) {
			delete(s.slots, k)
		}
	}
}

// roomLocked makes room for one more worker on gpu: under the cap, or by
// stopping the least recently used idle worker there holding no buffer.
// With none to stop, the caller gets ErrBusy.
func (s *Supervisor) roomLocked(gpu int) error {
	n := 0
	var victim *proc
	for p := range s.procs {
		if p.key.GPU != gpu || p.stopping || p.dead {
			continue
		}
		n++
		if p.ready && p.inflight == 0 && p.buffers == 0 && (victim == nil || p.lastUsed.Before(victim.lastUsed)) {
			victim = p
		}
	}
	for k, sl := range s.slots {
		if k.GPU == gpu && sl.starting != nil {
			n++
		}
	}
	if n < s.cfg.MaxWorkersPerGPU {
		return nil
	}
	if victim == nil {
		return fmt.Errorf("worker: gpu %d runs %d workers, its most, and every one is busy or holds buffers: %w", gpu, n, gpusvc.ErrBusy)
	}
	victim.stopping = true
	s.stats.Reaped++
	if sl := s.slots[victim.key]; sl != nil && sl.cur == victim {
		sl.cur = nil
	}
	s.wg.Go(func() {
		s.stop(victim)
		s.log.Info("idle gpu worker stopped to make room", "worker", victim.key.String())
		s.event("reaped", victim.key)
	})
	return nil
}

// backoff is the wait before the next start after n crashes in a row.
func (s *Supervisor) backoff(n int) time.Duration {
	if n < 2 {
		return 0
	}
	d := s.cfg.Backoff
	for i := 2; i < n && d < s.cfg.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, s.cfg.MaxBackoff)
}

// acquire returns k's running worker, starting it if need be, with a call
// counted in flight; release must be called when the call ends.
func (s *Supervisor) acquire(ctx context.Context, k Key) (*proc, func(), error) {
	if k.GPU < 0 || k.GPU >= len(s.info.Devices) {
		return nil, nil, fmt.Errorf("worker: gpu %d: %w (this host has %d)", k.GPU, gpusvc.ErrNoDevice, len(s.info.Devices))
	}
	s.mu.Lock()
	for {
		if s.closed {
			s.mu.Unlock()
			return nil, nil, fmt.Errorf("worker: %w", net.ErrClosed)
		}
		sl := s.slotOf(k)
		if p := sl.cur; p != nil && !p.dead && !p.stopping {
			p.inflight++
			s.mu.Unlock()
			return p, func() { s.release(p) }, nil
		}
		if ch := sl.starting; ch != nil {
			s.mu.Unlock()
			select {
			case <-ch:
			case <-ctx.Done():
				return nil, nil, ctx.Err()
			}
			s.mu.Lock()
			continue
		}
		if wait := s.backoff(sl.crashes); wait > 0 {
			if left := time.Until(sl.lastCrash.Add(wait)); left > 0 {
				s.mu.Unlock()
				return nil, nil, crashError(k.String(), fmt.Sprintf("crashed %d times in a row (last: %s); next start in %v",
					sl.crashes, sl.lastReason, left.Round(time.Millisecond)))
			}
		}
		if err := s.roomLocked(k.GPU); err != nil {
			s.mu.Unlock()
			return nil, nil, err
		}
		ch := make(chan struct{})
		sl.starting = ch
		restart := sl.crashes > 0
		s.mu.Unlock()

		p, _, err := s.spawn(ctx, k)

		s.mu.Lock()
		sl.starting = nil
		close(ch)
		if err != nil {
			// A failed start counts like a crash, so that a worker that
			// cannot start is not retried on every call.
			sl.crashes++
			sl.lastCrash, sl.lastReason = time.Now(), err.Error()
			s.mu.Unlock()
			return nil, nil, err
		}
		if restart {
			s.stats.Restarts++
		}
		sl.cur = p
	}
}

func (s *Supervisor) release(p *proc) {
	s.mu.Lock()
	p.inflight--
	p.lastUsed = time.Now()
	s.mu.Unlock()
}
