package pool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
)

// Buffer is memory on a host's GPU, in a session.
type Buffer struct {
	ID   uint64
	Size uint64
}

// BufferArg is a resident buffer read as a float32 tensor of the given
// shape.
func BufferArg(b Buffer, shape ...int64) kernel.Arg {
	return kernel.Arg{Kind: kernel.ArgBuffer, Buffer: b.ID, Tensor: kernel.Tensor{DType: kernel.Float32, Shape: shape}}
}

// Session is a session on one host of a pool, with its buffers. All its
// calls go to that host; when the host is lost they fail with an error
// wrapping ErrHostLost that names the host, and the session never moves.
// It is safe for concurrent use.
type Session struct {
	p    *Pool
	h    *host
	c    *gpusvc.Client
	lost chan struct{}
	gen  uint64
	id   uint64
	idle time.Duration
	gpu  string

	mu     sync.Mutex
	closed bool // guarded by mu
}

// OpenSession opens a session on the host placement picks among those
// whose policy allows this caller every kernel in kernels (with none
// named, the host's OpenSession decides). A host that refuses, or is
// unavailable before the session opens, is skipped for another once.
func (p *Pool) OpenSession(ctx context.Context, kernels ...string) (*Session, error) {
	w := work{what: "a session", kernels: kernels, gpu: p.cfg.GPU}
	if len(kernels) > 0 {
		w.what = "a session for " + fmt.Sprint(kernels)
	}
	var first error
	for attempt := 0; ; attempt++ {
		l, err := p.place(ctx, w)
		if err != nil {
			if first != nil {
				return nil, fmt.Errorf("%w; then %v", first, err)
			}
			return nil, err
		}
		res, err := l.client.OpenSession(ctx)
		if err == nil && l.h.addSession(l.gen) {
			l.release(0)
			return &Session{p: p, h: l.h, c: l.client, lost: l.lost, gen: l.gen, id: res.ID, idle: res.IdleTimeout, gpu: p.cfg.GPU}, nil
		}
		l.release(0)
		if err == nil {
			// Lost while opening: the host frees it at its idle timeout.
			err = ErrHostLost
		}
		f := classify(err, l.lost)
		switch f {
		case failDenied:
			for _, k := range kernels {
				l.h.forget(k, w.gpu)
			}
		case failNotSent, failHost:
			l.h.suspect(err)
		}
		err = fmt.Errorf("pool %s: open a session on %s: %w", p.target, l.h.name, err)
		if first != nil {
			err = fmt.Errorf("%w; then %w", first, err)
		}
		if attempt > 0 || f == failOther || ctx.Err() != nil {
			return nil, err
		}
		first = err
		w.exclude = append(w.exclude, l.h.name)
	}
}

// addSession counts a session opened on the client of generation gen,
// unless that client was lost meanwhile.
func (h *host) addSession(gen uint64) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gen != gen || h.client == nil {
		return false
	}
	h.sessions++
	return true
}

// Host is the name of the session's host.
func (s *Session) Host() string { return s.h.name }

// ID is the session's ID on its host.
func (s *Session) ID() uint64 { return s.id }

// IdleTimeout is how long the host keeps the session when it is unused.
func (s *Session) IdleTimeout() time.Duration { return s.idle }

// begin checks that the session can still be used and counts a call on
// its host; end stops counting it.
func (s *Session) begin() error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return fmt.Errorf("pool: session %d on %s: %w", s.id, s.h.name, net.ErrClosed)
	}
	if isClosed(s.lost) {
		return fmt.Errorf("pool: session %d on %s: %w", s.id, s.h.name, ErrHostLost)
	}
	s.h.mu.Lock()
	if s.h.gen == s.gen {
		s.h.outstanding++
	}
	s.h.mu.Unlock()
	return nil
}

func (s *Session) end() {
	s.h.mu.Lock()
	if s.h.gen == s.gen && s.h.outstanding > 0 {
		s.h.outstanding--
	}
	s.h.mu.Unlock()
}

// fail wraps a call's error with the session and its host; a call that
// failed because the host was lost says so.
func (s *Session) fail(op string, err error) error {
	if isClosed(s.lost) && !errors.Is(err, ErrHostLost) {
		return fmt.Errorf("pool: session %d on %s: %s: %w (%w)", s.id, s.h.name, op, ErrHostLost, err)
	}
	if f := classify(err, s.lost); f == failHost || f == failNotSent {
		s.h.suspect(err)
	}
	return fmt.Errorf("pool: session %d on %s: %s: %w", s.id, s.h.name, op, err)
}

// Compute runs a built-in kernel in the session, so its arguments may be
// the session's buffers (BufferArg).
func (s *Session) Compute(ctx context.Context, kernelName string, args ...kernel.Arg) (kernel.Tensor, error) {
	res, err := s.ComputeRequest(ctx, &pb.ComputeRequest{Kernel: kernelName, Args: gpusvc.ArgsToPB(args)})
	if err != nil {
		return kernel.Tensor{}, err
	}
	return firstOutput(res), nil
}

// ComputeRequest runs req in the session (whatever session req names). It
// is never retried elsewhere.
func (s *Session) ComputeRequest(ctx context.Context, req *pb.ComputeRequest) (*pb.ComputeResponse, error) {
	if err := s.begin(); err != nil {
		return nil, err
	}
	defer s.end()
	gpu := req.GetGpu()
	if gpu == "" {
		gpu = s.gpu
	}
	// A request of our own: the caller's is left as it was.
	req = &pb.ComputeRequest{Kernel: req.GetKernel(), Args: req.GetArgs(), Gpu: gpu, Session: s.id, OutBuffer: req.GetOutBuffer()}
	res, err := s.c.ComputeRequest(ctx, req)
	if err != nil {
		return nil, s.fail(req.GetKernel(), err)
	}
	return res, nil
}

// Alloc reserves n zeroed bytes on the session's GPU.
func (s *Session) Alloc(ctx context.Context, n uint64) (Buffer, error) {
	if err := s.begin(); err != nil {
		return Buffer{}, err
	}
	defer s.end()
	id, err := s.c.Alloc(ctx, s.id, s.gpu, n)
	if err != nil {
		return Buffer{}, s.fail(fmt.Sprintf("alloc %d bytes", n), err)
	}
	return Buffer{ID: id, Size: n}, nil
}

// Write copies data into b at byte offset off.
func (s *Session) Write(ctx context.Context, b Buffer, off uint64, data []byte) error {
	if err := s.begin(); err != nil {
		return err
	}
	defer s.end()
	if _, err := s.c.Write(ctx, s.id, b.ID, off, bytes.NewReader(data)); err != nil {
		return s.fail(fmt.Sprintf("write buffer %d", b.ID), err)
	}
	return nil
}

// Upload allocates a buffer holding data in one round trip.
func (s *Session) Upload(ctx context.Context, data []byte) (Buffer, error) {
	return s.UploadFrom(ctx, uint64(len(data)), bytes.NewReader(data))
}

// UploadFrom allocates an n-byte buffer and fills it from r in one
// stream; the host frees it unless all n bytes arrive.
func (s *Session) UploadFrom(ctx context.Context, n uint64, r io.Reader) (Buffer, error) {
	if err := s.begin(); err != nil {
		return Buffer{}, err
	}
	defer s.end()
	id, err := s.c.Upload(ctx, s.id, s.gpu, n, r)
	if err != nil {
		return Buffer{}, s.fail(fmt.Sprintf("upload %d bytes", n), err)
	}
	return Buffer{ID: id, Size: n}, nil
}

// Read returns n bytes of b from byte offset off; n = 0 reads to the end.
func (s *Session) Read(ctx context.Context, b Buffer, off, n uint64) ([]byte, error) {
	var out bytes.Buffer
	out.Grow(int(min(n, 64<<20)))
	if _, err := s.ReadTo(ctx, b, off, n, &out); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// ReadTo streams n bytes of b from byte offset off into w (n = 0: to the
// end) and returns the bytes copied.
func (s *Session) ReadTo(ctx context.Context, b Buffer, off, n uint64, w io.Writer) (int64, error) {
	if err := s.begin(); err != nil {
		return 0, err
	}
	defer s.end()
	k, err := s.c.Read(ctx, s.id, b.ID, off, n, w)
	if err != nil {
		return k, s.fail(fmt.Sprintf("read buffer %d", b.ID), err)
	}
	return k, nil
}

// Free releases b; the host zeroes it.
func (s *Session) Free(ctx context.Context, b Buffer) error {
	if err := s.begin(); err != nil {
		return err
	}
	defer s.end()
	if err := s.c.Free(ctx, s.id, b.ID); err != nil {
		return s.fail(fmt.Sprintf("free buffer %d", b.ID), err)
	}
	return nil
}

// Close closes the session; the host frees (and zeroes) its buffers. On a
// lost host it fails with ErrHostLost: the host frees them at its idle
// timeout, if it is still up. A second Close returns net.ErrClosed.
func (s *Session) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return net.ErrClosed
	}
	s.closed = true
	s.mu.Unlock()
	if isClosed(s.lost) {
		return fmt.Errorf("pool: session %d on %s: close: %w", s.id, s.h.name, ErrHostLost)
	}
	s.h.mu.Lock()
	if s.h.gen == s.gen && s.h.sessions > 0 {
		s.h.sessions--
	}
	s.h.mu.Unlock()
	if err := s.c.CloseSession(ctx, s.id); err != nil {
		return s.fail("close", err)
	}
	return nil
}
