package gpusvc

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/policy"
)

// Sessions own a caller's resident buffers and loaded modules.
//
// A session belongs to the overlay identity that opened it: a session ID
// presented by anyone else is answered exactly like an unknown one
// (NotFound), so IDs reveal nothing about other callers. Buffer IDs are
// numbered per session and are never the backend's handles.
//
// Policy. Resident-buffer calls (OpenSession, Alloc, Write, Read) need the
// policy to allow the caller at least one kernel, built-in or custom, on
// the GPU concerned (for OpenSession: on some GPU of the host). The
// decision that counts is the first allowing one in the order
// policy.BuiltinKernels() (matrix_mul first), then custom:ptx, custom:cuda;
// its max_memory caps the bytes the identity holds across all its sessions,
// its max_concurrent, rate and max_request (per Write chunk) apply as to
// any call, and its idle_timeout (default Config.DefaultIdleTimeout) ends
// a session nobody used for that long. Free and CloseSession only give
// back, so they need nothing but the session's owner. LoadModule needs
// custom:ptx or custom:cuda (by the source given) and Launch the right the
// module was loaded under; Compute keeps its own per-kernel check.
//
// Session end (CloseSession, idle timeout, Server.Stop) frees every buffer
// through the backend's Memory.Free, which zeroes it. A buffer in use by a
// Write or Read in flight is freed when that transfer ends.

// DefaultIdleTimeout ends sessions whose policy rule sets no idle_timeout.
const DefaultIdleTimeout = 10 * time.Minute

const (
	// DefaultChunkBytes is the size of Read's chunks unless asked otherwise,
	// and of the client's Write chunks.
	DefaultChunkBytes = 1 << 20
	// maxChunkBytes caps the chunk size a Read may ask for.
	maxChunkBytes = 64 << 20
	// maxSessionsPerCaller caps the sessions one identity holds open.
	maxSessionsPerCaller = 64
)

// errCustomNeedsCUDA is the answer to LoadModule and Launch on a backend
// without Modules.
var errCustomNeedsCUDA = status.Error(codes.Unimplemented,
	"gpumesh: custom kernels need a CUDA host: `gpumesh serve` on a machine with an NVIDIA GPU and the gpumesh-gpu worker; this host serves the built-in kernels only")

// sessions is the server's table of sessions. It owns the idle reaper
// goroutine, started with the first session and stopped by close.
type sessions struct {
	mem         Memory // nil when the backend keeps no buffers
	quotas      *quotas
	log         *slog.Logger
	defaultIdle time.Duration

	mu      sync.Mutex
	m       map[uint64]*session // by session ID; guarded by mu
	closed  bool                // guarded by mu
	started bool                // the reaper runs; guarded by mu

	wake chan struct{} // capacity 1: the reaper re-reads the deadlines
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// session is one caller's session. Its mutable fields are guarded by
// sessions.mu.
type session struct {
	id    uint64
	owner string // quotaKey of the identity that opened it
	who   string // that identity, for messages and logs
	idle  time.Duration

	last    time.Time // last use; guarded by sessions.mu
	active  int       // calls in progress on it; guarded by sessions.mu
	gone    bool      // closed; guarded by sessions.mu
	buffers map[uint64]*buffer
	nextBuf uint64
	modules map[moduleKey]string // loaded modules → the right they were loaded under
}

type moduleKey struct {
	gpu int
	id  string
}

// buffer is one resident buffer. pins and dropped are guarded by
// sessions.mu; the rest is fixed.
type buffer struct {
	handle uint64
	size   int64
	gpu    int
	owner  string // quota key its bytes are counted against

	pins    int  // transfers using it
	dropped bool // no longer in a session: freed at the last unpin
}

func newSessions(mem Memory, q *quotas, log *slog.Logger, defaultIdle time.Duration) *sessions {
	return &sessions{
		mem: mem, quotas: q, log: log, defaultIdle: defaultIdle,
		m:    make(map[uint64]*session),
		wake: make(chan struct{}, 1),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
}

// reap ends sessions idle for longer than their timeout. It sleeps until
// the earliest deadline, or until woken because one may have moved closer.
func (t *sessions) reap() {
	defer close(t.done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next := t.expire(time.Now())
		wait := time.Hour
		if !next.IsZero() {
			wait = max(time.Until(next), time.Millisecond)
		}
		timer.Reset(wait)
		select {
		case <-t.stop:
			return
		case <-t.wake:
		case <-timer.C:
		}
	}
}

// expire closes the sessions idle past their deadline at now and returns
// the next deadline (zero when none).
func (t *sessions) expire(now time.Time) (next time.Time) {
	var free []*buffer
	t.mu.Lock()
	for _, s := range t.m {
		if s.active > 0 {
			continue // its last call's end wakes us
		}
		d := s.last.Add(s.idle)
		if !now.Before(d) {
			bs := t.endLocked(s)
			free = append(free, bs...)
			t.log.Info("session idle, closed", "session", s.id, "caller", s.who, "idle_timeout", s.idle, "buffers", len(bs))
			continue
		}
		if next.IsZero() || d.Before(next) {
			next = d
		}
	}
	t.mu.Unlock()
	t.freeAll(free)
	return next
}

func (t *sessions) poke() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// close ends every session and stops the reaper. Safe to call twice.
func (t *sessions) close() {
	t.once.Do(func() {
		t.mu.Lock()
		t.closed = true
		started := t.started
		t.mu.Unlock()
		close(t.stop)
		if started {
			<-t.done
		}
		var free []*buffer
		t.mu.Lock()
		for _, s := range t.m {
			free = append(free, t.endLocked(s)...)
		}
		t.mu.Unlock()
		t.freeAll(free)
	})
}

// endLocked removes s from the table and returns its buffers that can be
// freed now; pinned ones are freed at their last unpin.
func (t *sessions) endLocked(s *session) []*buffer {
	delete(t.m, s.id)
	s.gone = true
	var free []*buffer
	for id, b := range s.buffers {
		delete(s.buffers, id)
		if b.dropLocked() {
			free = append(free, b)
		}
	}
	return free
}

// dropLocked takes b out of its session and reports whether it can be
// freed now.
func (b *buffer) dropLocked() bool {
	b.dropped = true
	return b.pins == 0
}

// free zeroes and releases b in the backend and returns its bytes to the
// owner's memory quota.
func (t *sessions) free(b *buffer) {
	if err := t.mem.Free(context.Background(), b.handle); err != nil {
		t.log.Warn("free buffer", "handle", b.handle, "err", err)
	}
	t.quotas.releaseMemory(b.owner, b.size)
}

func (t *sessions) freeAll(bs []*buffer) {
	for _, b := range bs {
		t.free(b)
	}
}

// open starts a session for owner.
func (t *sessions) open(owner, who string, idle time.Duration) (*session, error) {
	if idle <= 0 {
		idle = t.defaultIdle
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, status.Error(codes.Unavailable, "gpumesh: the server is stopping")
	}
	n := 0
	for _, s := range t.m {
		if s.owner == owner {
			n++
		}
	}
	if n >= maxSessionsPerCaller {
		return nil, status.Errorf(codes.ResourceExhausted, "gpumesh: %s already holds %d sessions; close one first", who, n)
	}
	id := rand.Uint64()
	for id == 0 || t.m[id] != nil {
		id = rand.Uint64()
	}
	s := &session{
		id: id, owner: owner, who: who, idle: idle, last: time.Now(),
		buffers: make(map[uint64]*buffer), modules: make(map[moduleKey]string),
	}
	t.m[id] = s
	if !t.started {
		t.started = true
		go t.reap()
	}
	t.poke()
	return s, nil
}

func noSession(id uint64) error {
	return status.Errorf(codes.NotFound, "gpumesh: no session %d (closed, idle past its timeout, or never opened by you)", id)
}

// lookupLocked finds owner's session id, marking it used.
func (t *sessions) lookupLocked(owner string, id uint64) (*session, error) {
	if id == 0 {
		return nil, status.Error(codes.InvalidArgument, "gpumesh: no session given; call OpenSession first")
	}
	s := t.m[id]
	if s == nil || s.owner != owner {
		return nil, noSession(id)
	}
	s.last = time.Now()
	return s, nil
}

// use finds owner's session id and holds it open against the idle timeout
// until done is called.
func (t *sessions) use(owner string, id uint64) (s *session, done func(), err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s, err = t.lookupLocked(owner, id); err != nil {
		return nil, nil, err
	}
	s.active++
	var once sync.Once
	return s, func() {
		once.Do(func() {
			t.mu.Lock()
			s.active--
			s.last = time.Now()
			t.mu.Unlock()
			t.poke()
		})
	}, nil
}

// end closes owner's session id.
func (t *sessions) end(owner string, id uint64) error {
	t.mu.Lock()
	s, err := t.lookupLocked(owner, id)
	if err != nil {
		t.mu.Unlock()
		return err
	}
	free := t.endLocked(s)
	t.mu.Unlock()
	t.freeAll(free)
	return nil
}

func noBuffer(session, id uint64) error {
	return status.Errorf(codes.NotFound, "gpumesh: no buffer %d in session %d", id, session)
}

// handle resolves a buffer of owner's session to the backend's handle.
func (t *sessions) handle(owner string, session, id uint64) (uint64, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, err := t.lookupLocked(owner, session)
	if err != nil {
		return 0, err
	}
	b := s.buffers[id]
	if b == nil {
		return 0, noBuffer(session, id)
	}
	return b.handle, nil
}

// pin finds buffer id of s and keeps it from being freed until unpin.
func (t *sessions) pin(s *session, id uint64) (b *buffer, unpin func(), err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if b = s.buffers[id]; b == nil {
		return nil, nil, noBuffer(s.id, id)
	}
	b.pins++
	var once sync.Once
	return b, func() {
		once.Do(func() {
			t.mu.Lock()
			b.pins--
			last := b.dropped && b.pins == 0
			t.mu.Unlock()
			if last {
				t.free(b)
			}
		})
	}, nil
}

// alloc reserves n bytes of the caller's memory quota and allocates them
// on gpu. The buffer is in no session yet: publish adds it, or the caller
// frees it with t.free.
func (t *sessions) alloc(ctx context.Context, c *caller, gpu int, n uint64) (*buffer, error) {
	if n == 0 {
		return nil, status.Error(codes.InvalidArgument, "gpumesh: alloc of 0 bytes")
	}
	if n > 1<<50 {
		return nil, status.Errorf(codes.InvalidArgument, "gpumesh: alloc of %d bytes is beyond any device", n)
	}
	key, size := quotaKey(c.id), int64(n)
	if err := t.quotas.reserveMemory(key, c.id.String(), size, c.decision.Limits.MaxMemory, c.decision.Rule); err != nil {
		return nil, err
	}
	h, err := t.mem.Alloc(ctx, gpu, size)
	if err != nil {
		t.quotas.releaseMemory(key, size)
		return nil, statusOf(fmt.Errorf("alloc %d bytes on gpu %d: %w", n, gpu, err))
	}
	return &buffer{handle: h, size: size, gpu: gpu, owner: key}, nil
}

// publish adds b to s and returns its ID there. If s has ended, b is
// freed and the error says so.
func (t *sessions) publish(s *session, b *buffer) (uint64, error) {
	t.mu.Lock()
	if s.gone {
		t.mu.Unlock()
		t.free(b)
		return 0, noSession(s.id)
	}
	s.nextBuf++
	id := s.nextBuf
	s.buffers[id] = b
	t.mu.Unlock()
	return id, nil
}

// remove frees buffer id of s (at its last unpin if in use).
func (t *sessions) remove(s *session, id uint64) error {
	t.mu.Lock()
	b := s.buffers[id]
	if b == nil {
		t.mu.Unlock()
		return noBuffer(s.id, id)
	}
	delete(s.buffers, id)
	now := b.dropLocked()
	t.mu.Unlock()
	if now {
		t.free(b)
	}
	return nil
}

func (t *sessions) addModule(s *session, k moduleKey, right string) {
	t.mu.Lock()
	s.modules[k] = right
	t.mu.Unlock()
}

func (t *sessions) module(s *session, k moduleKey) (right string, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	right, ok = s.modules[k]
	return right, ok
}

// count reports the open sessions and the buffers they hold, for tests
// and metrics.
func (t *sessions) count() (sessions, buffers int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, s := range t.m {
		buffers += len(s.buffers)
	}
	return len(t.m), buffers
}

// Sessions reports how many sessions are open and how many buffers they
// hold.
func (s *Server) Sessions() (sessions, buffers int) { return s.sessions.count() }

// residentKernels are the rights tried, in order, to decide a
// resident-buffer call (see the comment at the top of this file).
var residentKernels = append(policy.BuiltinKernels(), policy.KernelCustomPTX, policy.KernelCustomCUDA)

// residentDecision asks the policy whether id may hold buffers on one of
// gpus (names as requests give them; "" is the default GPU).
func (s *Server) residentDecision(id overlay.Identity, gpus []policy.Request) policy.Decision {
	p := s.cfg.Policy()
	var denied policy.Decision
	for i, g := range gpus {
		d := p.EvaluateAny(Subject(id), g, residentKernels)
		if d.Allow {
			return d
		}
		if i == 0 {
			denied = d
		}
	}
	return denied
}

// authorizeResident identifies the caller of a resident-buffer call on
// gpu, decides it, and takes a call slot of the caller's quota. On success
// the caller's release must be called when the call ends.
func (s *Server) authorizeResident(id overlay.Identity, gpu string) (*caller, error) {
	return s.admit(id, s.residentDecision(id, []policy.Request{{GPU: gpu}}), gpu)
}

// admit turns a decision into a caller holding a call slot.
func (s *Server) admit(id overlay.Identity, d policy.Decision, gpu string) (*caller, error) {
	c := &caller{id: id, decision: d, release: func() {}}
	if !d.Allow {
		return c, status.Errorf(codes.PermissionDenied,
			"gpumesh: denied by %s's policy: %s (resident buffers need the right to run some kernel on gpu %s)", s.cfg.Host, d.Reason, gpuName(gpu))
	}
	release, err := s.quotas.acquire(quotaKey(id), id.String(), d)
	if err != nil {
		return c, err
	}
	c.release = release
	return c, nil
}

// memory returns the backend's Memory, or the error a call gets without it.
func (s *Server) memory() (Memory, error) {
	if s.sessions.mem == nil {
		return nil, status.Error(codes.Unimplemented, "gpumesh: this host's backend keeps no resident buffers")
	}
	return s.sessions.mem, nil
}

// backendCtx tells the backend whose call this is and in which session
// (the CUDA worker supervisor routes by caller and streams by session).
func backendCtx(ctx context.Context, id overlay.Identity, sess *session) context.Context {
	return WithSession(WithCaller(ctx, quotaKey(id)), sess.id)
}

func identify(ctx context.Context) (overlay.Identity, error) {
	id, err := callerIdentity(ctx)
	if err != nil {
		return id, status.Errorf(codes.Unauthenticated, "%v", err)
	}
	return id, nil
}

// OpenSession starts a session for the caller.
func (s *Server) OpenSession(ctx context.Context, _ *pb.OpenSessionRequest) (res *pb.OpenSessionResponse, err error) {
	start := time.Now()
	var c *caller
	defer func() { s.record("OpenSession", c, "", "", 0, 0, start, err) }()
	id, err := identify(ctx)
	if err != nil {
		return nil, err
	}
	var gpus []policy.Request
	for _, d := range s.cfg.Backend.Info(ctx).Devices {
		gpus = append(gpus, policy.Request{GPU: strconv.Itoa(d.Index), GPUUUID: d.UUID})
	}
	if len(gpus) == 0 {
		gpus = []policy.Request{{}}
	}
	d := s.residentDecision(id, gpus)
	c = &caller{id: id, decision: d}
	if !d.Allow {
		return nil, status.Errorf(codes.PermissionDenied,
			"gpumesh: denied by %s's policy: %s (a session needs the right to run some kernel on some gpu)", s.cfg.Host, d.Reason)
	}
	sess, err := s.sessions.open(quotaKey(id), id.String(), d.Limits.IdleTimeout)
	if err != nil {
		return nil, err
	}
	s.log.Debug("session opened", "session", sess.id, "caller", sess.who, "idle_timeout", sess.idle)
	return &pb.OpenSessionResponse{Session: sess.id, IdleTimeoutMs: sess.idle.Milliseconds()}, nil
}

// CloseSession ends the caller's session and frees its buffers.
func (s *Server) CloseSession(ctx context.Context, req *pb.CloseSessionRequest) (res *pb.CloseSessionResponse, err error) {
	start := time.Now()
	var c *caller
	defer func() { s.record("CloseSession", c, "", "", 0, 0, start, err) }()
	id, err := identify(ctx)
	if err != nil {
		return nil, err
	}
	c = &caller{id: id}
	if err := s.sessions.end(quotaKey(id), req.GetSession()); err != nil {
		return nil, err
	}
	return &pb.CloseSessionResponse{}, nil
}

// Alloc reserves a buffer in the caller's session.
func (s *Server) Alloc(ctx context.Context, req *pb.AllocRequest) (res *pb.AllocResponse, err error) {
	start := time.Now()
	var c *caller
	defer func() { s.record("Alloc", c, "", req.GetGpu(), 0, 0, start, err) }()
	id, err := identify(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := s.memory(); err != nil {
		return nil, err
	}
	sess, done, err := s.sessions.use(quotaKey(id), req.GetSession())
	if err != nil {
		return nil, err
	}
	defer done()
	if c, err = s.authorizeResident(id, req.GetGpu()); err != nil {
		return nil, err
	}
	defer c.release()
	gpu, err := s.gpuIndex(ctx, req.GetGpu())
	if err != nil {
		return nil, err
	}
	b, err := s.sessions.alloc(backendCtx(ctx, id, sess), c, gpu, req.GetBytes())
	if err != nil {
		return nil, err
	}
	bid, err := s.sessions.publish(sess, b)
	if err != nil {
		return nil, err
	}
	return &pb.AllocResponse{Buffer: bid}, nil
}

// Free releases (and zeroes) a buffer of the caller's session.
func (s *Server) Free(ctx context.Context, req *pb.FreeRequest) (res *pb.FreeResponse, err error) {
	start := time.Now()
	var c *caller
	defer func() { s.record("Free", c, "", "", 0, 0, start, err) }()
	id, err := identify(ctx)
	if err != nil {
		return nil, err
	}
	c = &caller{id: id}
	sess, done, err := s.sessions.use(quotaKey(id), req.GetSession())
	if err != nil {
		return nil, err
	}
	defer done()
	if err := s.sessions.remove(sess, req.GetBuffer()); err != nil {
		return nil, err
	}
	return &pb.FreeResponse{}, nil
}

// Write uploads a client stream of chunks into a buffer. A new buffer
// (first message: buffer 0, alloc_bytes > 0) joins the session only once
// the stream has ended well; otherwise it is freed.
func (s *Server) Write(stream pb.GPU_WriteServer) (err error) {
	start := time.Now()
	ctx := stream.Context()
	var (
		c     *caller
		gpu   string
		total int64
	)
	defer func() { s.record("Write", c, "", gpu, total, 0, start, err) }()
	first, err := stream.Recv()
	if err == io.EOF {
		return status.Error(codes.InvalidArgument, "gpumesh: write: empty stream; the first message names the buffer")
	}
	if err != nil {
		return err
	}
	id, err := identify(ctx)
	if err != nil {
		return err
	}
	mem, err := s.memory()
	if err != nil {
		return err
	}
	sess, done, err := s.sessions.use(quotaKey(id), first.GetSession())
	if err != nil {
		return err
	}
	defer done()

	var (
		b     *buffer
		fresh bool // b is new and not yet in the session
		bid   = first.GetBuffer()
	)
	switch {
	case bid == 0 && first.GetAllocBytes() > 0:
		gpu = first.GetGpu()
		if c, err = s.authorizeResident(id, gpu); err != nil {
			return err
		}
		defer c.release()
		g, err := s.gpuIndex(ctx, gpu)
		if err != nil {
			return err
		}
		if b, err = s.sessions.alloc(backendCtx(ctx, id, sess), c, g, first.GetAllocBytes()); err != nil {
			return err
		}
		fresh = true
		defer func() {
			if fresh {
				s.sessions.free(b)
			}
		}()
	case bid != 0 && first.GetAllocBytes() == 0 && first.GetGpu() == "":
		var unpin func()
		if b, unpin, err = s.sessions.pin(sess, bid); err != nil {
			return err
		}
		defer unpin()
		gpu = strconv.Itoa(b.gpu)
		if c, err = s.authorizeResident(id, gpu); err != nil {
			return err
		}
		defer c.release()
	case bid != 0:
		return status.Error(codes.InvalidArgument, "gpumesh: write: name a buffer, or ask for a new one with alloc_bytes (and gpu), not both")
	default:
		return status.Error(codes.InvalidArgument, "gpumesh: write: the first message names a buffer or asks for a new one with alloc_bytes")
	}

	off := first.GetOffset()
	if off > uint64(b.size) {
		return status.Errorf(codes.OutOfRange, "gpumesh: write at offset %d of a %d-byte buffer", off, b.size)
	}
	maxChunk := c.decision.Limits.MaxRequestBytes
	for msg := first; ; {
		data := msg.GetData()
		if maxChunk > 0 && int64(len(data)) > maxChunk {
			return status.Errorf(codes.ResourceExhausted, "gpumesh: write chunk of %d bytes is over %s's max_request of %d bytes (rule %q)",
				len(data), id, maxChunk, c.decision.Rule)
		}
		if uint64(len(data)) > uint64(b.size)-off {
			return status.Errorf(codes.OutOfRange, "gpumesh: write of %d bytes at offset %d overruns the %d-byte buffer", len(data), off, b.size)
		}
		if len(data) > 0 {
			if err := mem.WriteAt(ctx, b.handle, int64(off), data); err != nil {
				return statusOf(fmt.Errorf("write: %w", err))
			}
			off += uint64(len(data))
			total += int64(len(data))
		}
		msg, err = stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err // the client went away; a new buffer is freed
		}
		if msg.GetSession() != 0 || msg.GetBuffer() != 0 || msg.GetAllocBytes() != 0 || msg.GetGpu() != "" || msg.GetOffset() != 0 {
			return status.Error(codes.InvalidArgument, "gpumesh: write: only the first message names the session, buffer, gpu and offset")
		}
	}
	if fresh {
		if bid, err = s.sessions.publish(sess, b); err != nil {
			fresh = false // publish freed it
			return err
		}
		fresh = false
		if err := stream.SendAndClose(&pb.WriteResponse{Buffer: bid, Bytes: uint64(total)}); err != nil {
			// The client cannot learn the buffer's ID: take it back.
			s.sessions.remove(sess, bid)
			return err
		}
		return nil
	}
	return stream.SendAndClose(&pb.WriteResponse{Buffer: bid, Bytes: uint64(total)})
}

// Read streams a range of a buffer to the caller in chunks.
func (s *Server) Read(req *pb.ReadRequest, stream pb.GPU_ReadServer) (err error) {
	start := time.Now()
	ctx := stream.Context()
	var (
		c   *caller
		gpu string
		out int64
	)
	defer func() { s.record("Read", c, "", gpu, 0, out, start, err) }()
	id, err := identify(ctx)
	if err != nil {
		return err
	}
	mem, err := s.memory()
	if err != nil {
		return err
	}
	sess, done, err := s.sessions.use(quotaKey(id), req.GetSession())
	if err != nil {
		return err
	}
	defer done()
	b, unpin, err := s.sessions.pin(sess, req.GetBuffer())
	if err != nil {
		return err
	}
	defer unpin()
	gpu = strconv.Itoa(b.gpu)
	if c, err = s.authorizeResident(id, gpu); err != nil {
		return err
	}
	defer c.release()

	off, n := req.GetOffset(), req.GetLength()
	size := uint64(b.size)
	if off > size {
		return status.Errorf(codes.OutOfRange, "gpumesh: read at offset %d of a %d-byte buffer", off, size)
	}
	if n == 0 {
		n = size - off
	}
	if n > size-off {
		return status.Errorf(codes.OutOfRange, "gpumesh: read of %d bytes at offset %d overruns the %d-byte buffer", n, off, size)
	}
	chunk := uint64(req.GetChunkBytes())
	if chunk == 0 {
		chunk = DefaultChunkBytes
	}
	if chunk > maxChunkBytes {
		return status.Errorf(codes.InvalidArgument, "gpumesh: read chunks of %d bytes; at most %d", chunk, maxChunkBytes)
	}
	// Send encodes the message before it returns, so one chunk buffer
	// serves the whole stream (a stats handler, had the server one, would
	// see later bytes in earlier messages; the wire never does).
	buf := make([]byte, min(chunk, n))
	for n > 0 {
		k := min(chunk, n)
		if err := mem.ReadAt(ctx, b.handle, int64(off), buf[:k]); err != nil {
			return statusOf(fmt.Errorf("read: %w", err))
		}
		if err := stream.Send(&pb.ReadResponse{Data: buf[:k]}); err != nil {
			return err
		}
		off += k
		n -= k
		out += int64(k)
	}
	return nil
}

// LoadModule loads PTX or CUDA C into the caller's session.
func (s *Server) LoadModule(ctx context.Context, req *pb.LoadModuleRequest) (res *pb.LoadModuleResponse, err error) {
	start := time.Now()
	var c *caller
	var right string
	defer func() { s.record("LoadModule", c, right, req.GetGpu(), int64(proto.Size(req)), 0, start, err) }()
	id, err := identify(ctx)
	if err != nil {
		return nil, err
	}
	c = &caller{id: id}
	mods, ok := s.cfg.Backend.(Modules)
	if !ok {
		return nil, errCustomNeedsCUDA
	}
	sess, done, err := s.sessions.use(quotaKey(id), req.GetSession())
	if err != nil {
		return nil, err
	}
	defer done()
	var src ModuleSource
	switch v := req.GetSource().(type) {
	case *pb.LoadModuleRequest_Ptx:
		right, src.PTX = policy.KernelCustomPTX, v.Ptx
	case *pb.LoadModuleRequest_Cuda:
		right, src.CUDA = policy.KernelCustomCUDA, v.Cuda
	}
	if right == "" || (len(src.PTX) == 0 && src.CUDA == "") {
		return nil, status.Error(codes.InvalidArgument, "gpumesh: load module: no ptx or cuda source")
	}
	if c, err = s.authorize(ctx, policy.Request{Kernel: right, GPU: req.GetGpu(), Bytes: int64(proto.Size(req))}); err != nil {
		return nil, err
	}
	defer c.release()
	gpu, err := s.gpuIndex(ctx, req.GetGpu())
	if err != nil {
		return nil, err
	}
	mid, log, cached, err := mods.LoadModule(backendCtx(ctx, id, sess), gpu, src)
	if err != nil {
		if log != "" {
			return nil, status.Errorf(status.Code(statusOf(err)), "gpumesh: load module: %v\n%s", err, log)
		}
		return nil, statusOf(fmt.Errorf("load module: %w", err))
	}
	s.sessions.addModule(sess, moduleKey{gpu: gpu, id: mid}, right)
	return &pb.LoadModuleResponse{Module: mid, Cached: cached, Log: log}, nil
}

// Launch runs a function of a module loaded in the caller's session.
func (s *Server) Launch(ctx context.Context, req *pb.LaunchRequest) (res *pb.LaunchResponse, err error) {
	start := time.Now()
	var c *caller
	var right string
	defer func() { s.record("Launch", c, right, req.GetGpu(), int64(proto.Size(req)), 0, start, err) }()
	id, err := identify(ctx)
	if err != nil {
		return nil, err
	}
	c = &caller{id: id}
	mods, ok := s.cfg.Backend.(Modules)
	if !ok {
		return nil, errCustomNeedsCUDA
	}
	sess, done, err := s.sessions.use(quotaKey(id), req.GetSession())
	if err != nil {
		return nil, err
	}
	defer done()
	gpu, err := s.gpuIndex(ctx, req.GetGpu())
	if err != nil {
		return nil, err
	}
	key := moduleKey{gpu: gpu, id: req.GetModule()}
	right, ok = s.sessions.module(sess, key)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "gpumesh: module %q is not loaded on gpu %d in session %d", key.id, gpu, sess.id)
	}
	if req.GetFunction() == "" {
		return nil, status.Error(codes.InvalidArgument, "gpumesh: launch: no function name")
	}
	if c, err = s.authorize(ctx, policy.Request{Kernel: right, GPU: req.GetGpu(), Bytes: int64(proto.Size(req))}); err != nil {
		return nil, err
	}
	defer c.release()
	args, err := s.kernelArgs(ctx, c, sess.id, req.GetArgs())
	if err != nil {
		return nil, err
	}
	l := Launch{
		GPU: gpu, Module: key.id, Function: req.GetFunction(),
		Grid: dim3(req.GetGrid()), Block: dim3(req.GetBlock()), SharedMemBytes: req.GetSharedMemBytes(), Args: args,
	}
	t0 := time.Now()
	if err := mods.Launch(backendCtx(ctx, id, sess), l); err != nil {
		return nil, statusOf(fmt.Errorf("launch %s: %w", l.Function, err))
	}
	return &pb.LaunchResponse{ComputeNanos: time.Since(t0).Nanoseconds()}, nil
}

// dim3 reads a launch dimension; a missing or 0 component is 1.
func dim3(d *pb.Dim3) [3]uint32 {
	one := func(v uint32) uint32 { return max(v, 1) }
	return [3]uint32{one(d.GetX()), one(d.GetY()), one(d.GetZ())}
}
