package gpusvc

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/policy"
)

// Resident buffers: the session and buffer calls.
//
// Policy. Resident-buffer calls (OpenSession, Alloc, Write, Read) need the
// policy to allow the caller at least one kernel, built-in or custom, on
// the GPU concerned (for OpenSession, and for Write before its first
// message is read: on some GPU of the host). The decision that counts is
// the first allowing one in the order policy.BuiltinKernels() (matrix_mul
// first), then custom:ptx, custom:cuda; its max_memory caps the bytes the
// identity holds across all its sessions, its max_concurrent, rate and
// max_request (per Write chunk) apply as to any call, and its idle_timeout
// (default Config.DefaultIdleTimeout) ends a session nobody used for that
// long. Free and CloseSession only give back, so they need nothing but the
// session's owner.

const (
	// DefaultChunkBytes is the size of Read's chunks unless asked otherwise,
	// and of the client's Write chunks when the caller's max_request allows.
	DefaultChunkBytes = 1 << 20
	// maxChunkBytes caps the chunk size a Read may ask for.
	maxChunkBytes = 64 << 20
)

// residentDecision asks the policy whether who may hold buffers on one of
// devs: the first allowing decision, else the first denial.
func (s *Server) residentDecision(who *caller, devs []device) policy.Decision {
	p := s.policy()
	var denied policy.Decision
	for i, d := range devs {
		dec := p.EvaluateAny(who.subject, policy.Request{GPU: d.name, GPUUUID: d.uuid}, s.resident)
		if dec.Allow {
			return dec
		}
		if i == 0 {
			denied = dec
		}
	}
	return denied
}

// authorizeResident makes a resident-buffer call's decision on dev.
func (s *Server) authorizeResident(c *call, dev device, bytes int64) error {
	return s.admitDecision(c, s.residentDecision(c.who, []device{dev}), bytes,
		" (resident buffers need the right to run some kernel on gpu "+dev.name+")")
}

// allDevices is every device of the host; a backend that reports none
// serves device 0.
func (s *Server) allDevices() []device {
	if len(s.devices.list) == 0 {
		return []device{{name: "0"}}
	}
	return s.devices.list
}

// memory returns the backend's Memory, or the error a call gets without it.
func (s *Server) memory() (Memory, error) {
	if s.sessions.mem == nil {
		return nil, errNoMemory
	}
	return s.sessions.mem, nil
}

// OpenSession starts a session for the caller.
func (s *Server) OpenSession(ctx context.Context, _ *pb.OpenSessionRequest) (*pb.OpenSessionResponse, error) {
	c := callOf(ctx)
	d := s.residentDecision(c.who, s.allDevices())
	c.decide(d)
	if !d.Allow {
		return nil, s.denied(d, " (a session needs the right to run some kernel on some gpu)")
	}
	sess, err := s.sessions.open(c.who, d.Limits.IdleTimeout, s.pods.released)
	if err != nil {
		return nil, err
	}
	s.log.Debug("session opened", "session", sess.id, "caller", sess.who, "idle_timeout", sess.idle)
	return &pb.OpenSessionResponse{Session: sess.id, IdleTimeoutMs: sess.idle.Milliseconds()}, nil
}

// CloseSession ends the caller's session and frees its buffers.
func (s *Server) CloseSession(ctx context.Context, req *pb.CloseSessionRequest) (*pb.CloseSessionResponse, error) {
	if err := s.sessions.end(callOf(ctx).who.key, req.GetSession()); err != nil {
		return nil, err
	}
	return &pb.CloseSessionResponse{}, nil
}

// Alloc reserves a buffer in the caller's session.
func (s *Server) Alloc(ctx context.Context, req *pb.AllocRequest) (*pb.AllocResponse, error) {
	c := callOf(ctx)
	if _, err := s.memory(); err != nil {
		return nil, err
	}
	dev, err := c.resolveGPU(s, req.GetGpu())
	if err != nil {
		return nil, err
	}
	sess, err := s.sessions.use(c, req.GetSession())
	if err != nil {
		return nil, err
	}
	if err := s.authorizeResident(c, dev, 0); err != nil {
		return nil, err
	}
	if err := s.sessions.room(sess); err != nil {
		return nil, err
	}
	b, err := s.sessions.alloc(backendCtx(ctx, c, sess.id), c, dev, req.GetBytes())
	if err != nil {
		return nil, err
	}
	bid, err := s.sessions.publish(sess, b)
	if err != nil {
		return nil, err
	}
	return &pb.AllocResponse{Buffer: bid}, nil
}

// Free releases (and zeroes) a buffer of the caller's session; a buffer a
// call in flight uses is freed when that call ends.
func (s *Server) Free(ctx context.Context, req *pb.FreeRequest) (*pb.FreeResponse, error) {
	c := callOf(ctx)
	sess, err := s.sessions.use(c, req.GetSession())
	if err != nil {
		return nil, err
	}
	if err := s.sessions.remove(sess, req.GetBuffer()); err != nil {
		return nil, err
	}
	return &pb.FreeResponse{}, nil
}

// residentBuffer is the preamble Write (to an existing buffer) and Read
// share: the caller's session, the buffer pinned until the call ends, and
// the call's decision on the buffer's GPU.
func (s *Server) residentBuffer(c *call, session, id uint64, bytes int64) (*session, *buffer, error) {
	sess, err := s.sessions.use(c, session)
	if err != nil {
		return nil, nil, err
	}
	bs, err := s.sessions.pin(c, sess, id)
	if err != nil {
		return nil, nil, err
	}
	b := bs[0]
	c.gpu = b.gpu.name
	if err := s.authorizeResident(c, b.gpu, bytes); err != nil {
		return nil, nil, err
	}
	return sess, b, nil
}

// Write uploads a client stream of chunks into a buffer. The caller is
// identified and must hold a resident right on some GPU before its first
// message is read. A new buffer (first message: buffer 0, alloc_bytes > 0)
// joins the session only once the stream has ended well; otherwise it is
// freed.
func (s *Server) Write(stream pb.GPU_WriteServer) error {
	ctx := stream.Context()
	c := callOf(ctx)
	mem, err := s.memory()
	if err != nil {
		return err
	}
	if gate := s.residentDecision(c.who, s.allDevices()); !gate.Allow {
		c.decide(gate)
		return s.denied(gate, " (resident buffers need the right to run some kernel on some gpu)")
	}
	first, err := stream.Recv()
	if errors.Is(err, io.EOF) {
		return status.Error(codes.InvalidArgument, "gpumesh: write: empty stream; the first message names the buffer")
	}
	if err != nil {
		return err
	}
	var (
		sess  *session
		b     *buffer
		fresh bool // b is new and not yet in the session
		bid   = first.GetBuffer()
		chunk = int64(len(first.GetData()))
	)
	switch {
	case bid == 0 && first.GetAllocBytes() > 0:
		dev, err := c.resolveGPU(s, first.GetGpu())
		if err != nil {
			return err
		}
		if sess, err = s.sessions.use(c, first.GetSession()); err != nil {
			return err
		}
		if err := s.authorizeResident(c, dev, chunk); err != nil {
			return err
		}
		if err := s.sessions.room(sess); err != nil {
			return err
		}
		if b, err = s.sessions.alloc(backendCtx(ctx, c, sess.id), c, dev, first.GetAllocBytes()); err != nil {
			return err
		}
		fresh = true
		defer func() {
			if fresh {
				s.sessions.free(b)
			}
		}()
	case bid != 0 && first.GetAllocBytes() == 0 && first.GetGpu() == "":
		if sess, b, err = s.residentBuffer(c, first.GetSession(), bid, chunk); err != nil {
			return err
		}
	case bid != 0:
		return status.Error(codes.InvalidArgument, "gpumesh: write: name a buffer, or ask for a new one with alloc_bytes (and gpu), not both")
	default:
		return status.Error(codes.InvalidArgument, "gpumesh: write: the first message names a buffer or asks for a new one with alloc_bytes")
	}
	if err := s.receiveChunks(ctx, c, stream, first, mem, b); err != nil {
		return err
	}
	res := &pb.WriteResponse{Buffer: bid, Bytes: uint64(c.in)}
	if fresh {
		fresh = false // publish frees it on failure
		if res.Buffer, err = s.sessions.publish(sess, b); err != nil {
			return err
		}
		if err := stream.SendAndClose(res); err != nil {
			// The client cannot learn the buffer's ID: take it back.
			s.sessions.remove(sess, res.Buffer)
			return err
		}
		return nil
	}
	return stream.SendAndClose(res)
}

// receiveChunks writes the stream's chunks, from first on, into b.
func (s *Server) receiveChunks(ctx context.Context, c *call, stream pb.GPU_WriteServer, first *pb.WriteRequest, mem Memory, b *buffer) error {
	off := first.GetOffset()
	if off > uint64(b.size) {
		return status.Errorf(codes.OutOfRange, "gpumesh: write at offset %d of a %d-byte buffer", off, b.size)
	}
	maxChunk := c.decision.Limits.MaxRequestBytes
	for msg := first; ; {
		data := msg.GetData()
		if maxChunk > 0 && int64(len(data)) > maxChunk {
			return status.Errorf(codes.ResourceExhausted, "gpumesh: write chunk of %d bytes is over %s's max_request of %d bytes (rule %q)",
				len(data), c.who.name, maxChunk, c.decision.Rule)
		}
		if uint64(len(data)) > uint64(b.size)-off {
			return status.Errorf(codes.OutOfRange, "gpumesh: write of %d bytes at offset %d overruns the %d-byte buffer", len(data), off, b.size)
		}
		if len(data) > 0 {
			if err := mem.WriteAt(ctx, b.handle, int64(off), data); err != nil {
				return statusOf(fmt.Errorf("write: %w", err))
			}
			off += uint64(len(data))
			c.in += int64(len(data))
		}
		var err error
		msg, err = stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err // the client went away; a new buffer is freed
		}
		if msg.GetSession() != 0 || msg.GetBuffer() != 0 || msg.GetAllocBytes() != 0 || msg.GetGpu() != "" || msg.GetOffset() != 0 {
			return status.Error(codes.InvalidArgument, "gpumesh: write: only the first message names the session, buffer, gpu and offset")
		}
	}
}

// Read streams a range of a buffer to the caller in chunks.
func (s *Server) Read(req *pb.ReadRequest, stream pb.GPU_ReadServer) error {
	ctx := stream.Context()
	c := callOf(ctx)
	mem, err := s.memory()
	if err != nil {
		return err
	}
	off, n, chunk := req.GetOffset(), req.GetLength(), uint64(req.GetChunkBytes())
	if chunk == 0 {
		chunk = DefaultChunkBytes
	}
	if chunk > maxChunkBytes {
		return status.Errorf(codes.InvalidArgument, "gpumesh: read chunks of %d bytes; at most %d", chunk, maxChunkBytes)
	}
	_, b, err := s.residentBuffer(c, req.GetSession(), req.GetBuffer(), 0)
	if err != nil {
		return err
	}
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
	// Send encodes the message before it returns, so one chunk buffer
	// serves the whole stream; it counts against the host's budget.
	k := int64(min(chunk, n))
	if err := s.quotas.take(k); err != nil {
		return err
	}
	c.onEnd(func() { s.quotas.give(k) })
	buf := make([]byte, k)
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
		c.out += int64(k)
	}
	return nil
}
