package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	pb "github.com/gpumesh/gpumesh/gpusvc/worker/workerpb"
)

var (
	_ gpusvc.Backend = (*Supervisor)(nil)
	_ gpusvc.Memory  = (*Supervisor)(nil)
	_ gpusvc.Modules = (*Supervisor)(nil)
)

// Info describes the workers' backend and devices as the first worker
// reported them, with live memory figures from a running worker when
// there is one.
func (s *Supervisor) Info(ctx context.Context) gpusvc.Info {
	info := s.info
	info.Devices = append([]gpusvc.Device(nil), s.info.Devices...)
	info.Status = fmt.Sprintf("%s backend through %s workers, one process per GPU and caller: %s",
		s.info.Backend, s.cfg.Path, s.info.Status)
	s.mu.Lock()
	var live *proc
	for p := range s.procs {
		if p.ready && !p.stopping {
			live = p
			break
		}
	}
	s.mu.Unlock()
	if live != nil {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		if res, err := live.client.Info(ctx, &pb.InfoRequest{}); err == nil {
			now := infoFromPB(res.GetInfo())
			for i := range info.Devices {
				for _, d := range now.Devices {
					if d.Index == info.Devices[i].Index {
						info.Devices[i].MemoryUsed = d.MemoryUsed
					}
				}
			}
		}
	}
	return info
}

// callKey is the worker a call from ctx on gpu goes to.
func callKey(ctx context.Context, gpu int) Key {
	return Key{GPU: gpu, Caller: gpusvc.CallerKey(ctx)}
}

// failed turns an RPC error into the backend's: a worker that died during
// the call gives ErrCrashed, naming why it died.
func (s *Supervisor) failed(ctx context.Context, p *proc, what string, err error) error {
	if status.Code(err) == codes.Unavailable || status.Code(err) == codes.Canceled && ctx.Err() == nil {
		// The connection broke: wait for the process's end to say why.
		t := time.NewTimer(s.cfg.StopGrace)
		defer t.Stop()
		select {
		case <-p.exited:
			s.mu.Lock()
			reason := p.reason
			s.mu.Unlock()
			return crashError(fmt.Sprintf("%s: %s died during the call", what, p.key), reason)
		case <-t.C:
		case <-ctx.Done():
		}
	}
	return fmt.Errorf("worker: %s: %w", what, fromStatus(err))
}

// route finds the worker for a call: the worker holding its buffers, which
// must be the caller's, or else the caller's worker for gpu.
func (s *Supervisor) route(ctx context.Context, gpu int, args []kernel.Arg, out uint64) (*proc, func(), func(uint64) (uint64, error), error) {
	k := callKey(ctx, gpu)
	var bufs []uint64
	for _, a := range args {
		if a.Kind == kernel.ArgBuffer {
			bufs = append(bufs, a.Buffer)
		}
	}
	if out != 0 {
		bufs = append(bufs, out)
	}
	s.mu.Lock()
	var holder *proc
	for _, h := range bufs {
		b, ok := s.buffers[h]
		if !ok {
			s.mu.Unlock()
			return nil, nil, nil, fmt.Errorf("worker: buffer %d: %w", h, gpusvc.ErrNoBuffer)
		}
		if b.p.dead {
			reason := b.p.reason
			s.mu.Unlock()
			return nil, nil, nil, lostError(h, reason)
		}
		if holder == nil {
			holder = b.p
		}
		if b.p != holder || (k.Caller != "" && b.p.key.Caller != k.Caller) || b.p.key.GPU != gpu {
			s.mu.Unlock()
			return nil, nil, nil, fmt.Errorf("worker: buffer %d is not on gpu %d of this caller: %w", h, gpu, gpusvc.ErrNoBuffer)
		}
	}
	if holder != nil {
		if holder.stopping {
			s.mu.Unlock()
			return nil, nil, nil, crashError(holder.key.String(), "stopping")
		}
		holder.inflight++
		s.mu.Unlock()
		return holder, func() { s.release(holder) }, s.handleIn(holder), nil
	}
	s.mu.Unlock()
	p, release, err := s.acquire(ctx, k)
	if err != nil {
		return nil, nil, nil, err
	}
	return p, release, s.handleIn(p), nil
}

// handleIn maps node handles to p's.
func (s *Supervisor) handleIn(p *proc) func(uint64) (uint64, error) {
	return func(h uint64) (uint64, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		b, ok := s.buffers[h]
		if !ok || b.p != p {
			return 0, fmt.Errorf("worker: buffer %d: %w", h, gpusvc.ErrNoBuffer)
		}
		return b.handle, nil
	}
}

// Compute runs a built-in kernel in the caller's worker.
func (s *Supervisor) Compute(ctx context.Context, c gpusvc.Call) (kernel.Tensor, error) {
	p, release, handle, err := s.route(ctx, c.GPU, c.Args, c.Out)
	if err != nil {
		return kernel.Tensor{}, err
	}
	defer release()
	args, err := argsToPB(c.Args, handle)
	if err != nil {
		return kernel.Tensor{}, err
	}
	req := &pb.ComputeRequest{
		Kernel: c.Kernel, Gpu: int32(c.GPU), Args: args, OutShape: c.OutShape, Session: gpusvc.SessionID(ctx),
	}
	if c.Out != 0 {
		if req.Out, err = handle(c.Out); err != nil {
			return kernel.Tensor{}, err
		}
	}
	res, err := p.client.Compute(ctx, req)
	if err != nil {
		return kernel.Tensor{}, s.failed(ctx, p, c.Kernel, err)
	}
	return tensorFromPB(res.GetOut()), nil
}

// Alloc allocates in the caller's worker for gpu.
func (s *Supervisor) Alloc(ctx context.Context, gpu int, n int64) (uint64, error) {
	if !s.mem {
		return 0, fmt.Errorf("worker: resident buffers: %w", gpusvc.ErrUnsupported)
	}
	p, release, err := s.acquire(ctx, callKey(ctx, gpu))
	if err != nil {
		return 0, err
	}
	defer release()
	res, err := p.client.Alloc(ctx, &pb.AllocRequest{Gpu: int32(gpu), Bytes: n, Session: gpusvc.SessionID(ctx)})
	if err != nil {
		return 0, s.failed(ctx, p, "alloc", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if p.dead {
		return 0, crashError("alloc: "+p.key.String(), p.reason)
	}
	s.next++
	s.buffers[s.next] = &bufRef{p: p, handle: res.GetHandle()}
	p.buffers++
	return s.next, nil
}

// buffer returns h's worker, with a call counted in flight there.
func (s *Supervisor) buffer(h uint64) (*bufRef, func(), error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.buffers[h]
	if !ok {
		return nil, nil, fmt.Errorf("worker: buffer %d: %w", h, gpusvc.ErrNoBuffer)
	}
	if b.p.dead {
		return nil, nil, lostError(h, b.p.reason)
	}
	b.p.inflight++
	return b, func() { s.release(b.p) }, nil
}

// Free frees h in its worker, which zeroes it. The buffer of a worker that
// died is gone with it; freeing it only forgets it.
func (s *Supervisor) Free(ctx context.Context, h uint64) error {
	s.mu.Lock()
	b, ok := s.buffers[h]
	if ok {
		delete(s.buffers, h)
		b.p.buffers--
	}
	dead := ok && b.p.dead
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("worker: buffer %d: %w", h, gpusvc.ErrNoBuffer)
	}
	if dead {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.StopGrace)
	defer cancel()
	if _, err := b.p.client.Free(ctx, &pb.FreeRequest{Handle: b.handle}); err != nil {
		s.mu.Lock()
		dead = b.p.dead
		s.mu.Unlock()
		if dead || errors.Is(ctx.Err(), context.DeadlineExceeded) && status.Code(err) == codes.DeadlineExceeded {
			return nil
		}
		return fmt.Errorf("worker: free: %w", fromStatus(err))
	}
	return nil
}

// WriteAt copies p into buffer h at off.
func (s *Supervisor) WriteAt(ctx context.Context, h uint64, off int64, p []byte) error {
	return s.transfer(ctx, h, off, p, true)
}

// ReadAt copies from buffer h at off into p.
func (s *Supervisor) ReadAt(ctx context.Context, h uint64, off int64, p []byte) error {
	return s.transfer(ctx, h, off, p, false)
}

// transfer moves p into (write) or out of buffer h at off, through the
// worker's shared memory when it has some, else through the socket.
func (s *Supervisor) transfer(ctx context.Context, h uint64, off int64, p []byte, write bool) error {
	b, release, err := s.buffer(h)
	if err != nil {
		return err
	}
	defer release()
	if b.p.shm != nil {
		return s.viaShm(ctx, b, off, p, write)
	}
	if write {
		if _, err := b.p.client.WriteAt(ctx, &pb.WriteAtRequest{Handle: b.handle, Offset: off, Data: p}); err != nil {
			return s.failed(ctx, b.p, "write", err)
		}
		return nil
	}
	for len(p) > 0 {
		n := min(len(p), maxRead)
		res, err := b.p.client.ReadAt(ctx, &pb.ReadAtRequest{Handle: b.handle, Offset: off, Length: int64(n)})
		if err != nil {
			return s.failed(ctx, b.p, "read", err)
		}
		if len(res.GetData()) != n {
			return fmt.Errorf("worker: read %d bytes, got %d", n, len(res.GetData()))
		}
		copy(p, res.GetData())
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// viaShm moves p to (write) or from a buffer through the worker's shared
// memory, a slot at a time.
func (s *Supervisor) viaShm(ctx context.Context, b *bufRef, off int64, p []byte, write bool) error {
	w := b.p
	var slot int
	select {
	case slot = <-w.slots:
	case <-ctx.Done():
		return ctx.Err()
	case <-w.exited:
		s.mu.Lock()
		reason := w.reason
		s.mu.Unlock()
		return crashError(w.key.String(), reason)
	}
	defer func() { w.slots <- slot }()
	for len(p) > 0 {
		n := min(len(p), w.slot)
		req := &pb.ShmRequest{Handle: b.handle, Offset: off, ShmOffset: int64(slot), Length: int64(n)}
		var err error
		if write {
			copy(w.shm[slot:slot+n], p[:n])
			_, err = w.client.WriteShm(ctx, req)
		} else {
			if _, err = w.client.ReadShm(ctx, req); err == nil {
				copy(p[:n], w.shm[slot:slot+n])
			}
		}
		if err != nil {
			what := "read"
			if write {
				what = "write"
			}
			return s.failed(ctx, w, what, err)
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// LoadModule loads a module into the caller's worker for gpu. The source is
// kept, so that a restarted worker gets the module again on first use.
func (s *Supervisor) LoadModule(ctx context.Context, gpu int, src gpusvc.ModuleSource) (string, string, bool, error) {
	if !s.mods {
		return "", "", false, fmt.Errorf("worker: custom kernels: %w", gpusvc.ErrUnsupported)
	}
	k := callKey(ctx, gpu)
	p, release, err := s.acquire(ctx, k)
	if err != nil {
		return "", "", false, err
	}
	defer release()
	res, err := p.client.LoadModule(ctx, &pb.LoadModuleRequest{Gpu: int32(gpu), Ptx: src.PTX, Cuda: src.CUDA})
	if err != nil {
		return "", "", false, s.failed(ctx, p, "load module", err)
	}
	s.mu.Lock()
	s.slotOf(k).modules.keep(res.GetId(), src)
	p.loaded[res.GetId()] = true
	s.mu.Unlock()
	return res.GetId(), res.GetLog(), res.GetCached(), nil
}

// Launch runs a function of a module the caller loaded, in their worker.
func (s *Supervisor) Launch(ctx context.Context, l gpusvc.Launch) error {
	if !s.mods {
		return fmt.Errorf("worker: custom kernels: %w", gpusvc.ErrUnsupported)
	}
	p, release, handle, err := s.route(ctx, l.GPU, l.Args, 0)
	if err != nil {
		return err
	}
	defer release()
	s.mu.Lock()
	loaded := p.loaded[l.Module]
	src, kept := s.slotOf(p.key).modules.get(l.Module)
	s.mu.Unlock()
	if !loaded && !kept {
		return status.Errorf(codes.FailedPrecondition,
			"gpumesh: module %s is not loaded in this caller's gpu worker, which restarted since, and the host no longer keeps its source (it keeps the %d most recent per caller); load it again", l.Module, maxKeptModules)
	}
	if !loaded { // the worker restarted since the module was loaded
		res, err := p.client.LoadModule(ctx, &pb.LoadModuleRequest{Gpu: int32(l.GPU), Ptx: src.PTX, Cuda: src.CUDA})
		if err != nil {
			return s.failed(ctx, p, "reload module", err)
		}
		s.mu.Lock()
		p.loaded[res.GetId()] = true
		s.mu.Unlock()
	}
	args, err := argsToPB(l.Args, handle)
	if err != nil {
		return err
	}
	_, err = p.client.Launch(ctx, &pb.LaunchRequest{
		Gpu: int32(l.GPU), Module: l.Module, Function: l.Function, Grid: l.Grid[:], Block: l.Block[:],
		SharedMemBytes: l.SharedMemBytes, Args: args, Session: gpusvc.SessionID(ctx),
	})
	if err != nil {
		return s.failed(ctx, p, "launch "+l.Function, err)
	}
	return nil
}
