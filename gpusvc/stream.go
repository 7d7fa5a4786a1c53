package gpusvc

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/policy"
)

// DefaultStreamConcurrency is how many calls of one Stream run at once
// when the caller's rule sets no max_concurrent (a rule's lower one wins).
// As many again may wait for a slot; a call beyond that is answered
// ResourceExhausted at once.
const DefaultStreamConcurrency = 64

// streamRunners is how many calls of one of the caller's Streams run at
// once: its rule's max_concurrent, at most Config.StreamConcurrency.
func (s *Server) streamRunners(l policy.Limits) int {
	if l.MaxConcurrent > 0 {
		return min(l.MaxConcurrent, s.cfg.StreamConcurrency)
	}
	return s.cfg.StreamConcurrency
}

// Stream runs Compute calls from one long-lived stream concurrently: each
// in its own goroutine, with its own context (cancelled by a cancel
// message for its id, or by its timeout), answered by id when it ends.
// One call's failure never ends the stream. When the client half-closes,
// the calls in flight finish and are answered before the stream ends.
func (s *Server) Stream(stream pb.GPU_StreamServer) error {
	ctx := stream.Context()
	t, ok := ctx.Value(tappedKey{}).(tapped)
	if !ok {
		c, err := s.begin(ctx, "Stream")
		if err == nil {
			err = status.Error(codes.Unauthenticated, "gpumesh: stream not admitted")
		}
		return s.end(c, nil, err)
	}
	runners := s.streamRunners(t.admit.Limits)
	sc := &streamCalls{
		srv: s, stream: stream, window: 2 * runners,
		slots: make(chan struct{}, runners),
		calls: make(map[uint64]context.CancelFunc),
	}
	// Each call identifies its caller itself (a cached answer): the
	// tap's identification was the stream's.
	ctx = context.WithValue(ctx, tapUsedKey{}, true)
	defer sc.wg.Wait()
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil // the calls in flight are answered first
		}
		if err != nil {
			if c := status.Code(err); c != codes.Canceled && c != codes.DeadlineExceeded {
				// A message the stream could not take (too large, not
				// decodable): one call, which ends the stream.
				rc, _ := s.begin(ctx, "Stream")
				s.end(rc, nil, err)
			}
			return err
		}
		if req.GetCancel() {
			sc.cancel(req.GetId())
			continue
		}
		sc.start(ctx, req)
	}
}

// streamCalls are the calls in flight on one Stream.
type streamCalls struct {
	srv    *Server
	stream pb.GPU_StreamServer
	window int           // calls running or queued at most
	slots  chan struct{} // one per running call
	wg     sync.WaitGroup

	mu    sync.Mutex
	calls map[uint64]context.CancelFunc // by id; guarded by mu

	sendMu sync.Mutex // one sender at a time
}

// start begins the call req: it runs in its own goroutine once a slot is
// free. A call the stream cannot take (its id in flight already, the
// window full, the host's memory budget full) is answered at once.
func (sc *streamCalls) start(ctx context.Context, req *pb.StreamRequest) {
	s, id := sc.srv, req.GetId()
	size := int64(proto.Size(req.GetCompute()))
	sc.mu.Lock()
	var refuse error
	switch _, dup := sc.calls[id]; {
	case dup:
		refuse = status.Errorf(codes.InvalidArgument, "gpumesh: call id %d is already in flight on this stream", id)
	case len(sc.calls) >= sc.window:
		refuse = status.Errorf(codes.ResourceExhausted, "gpumesh: %d calls already in flight or queued on this stream, its most (stream_window)", len(sc.calls))
	default:
		// The request stays in memory until its call ends: it counts
		// against the host's budget meanwhile.
		refuse = s.quotas.take(size)
	}
	if refuse != nil {
		sc.mu.Unlock()
		c, err := s.begin(ctx, "Compute")
		if err == nil {
			c.in, err = size, refuse
			c.kernel, _ = checkName("kernel", req.GetCompute().GetKernel())
		}
		sc.send(id, nil, s.end(c, nil, err))
		return
	}
	var (
		cctx   context.Context
		cancel context.CancelFunc
	)
	if us := req.GetTimeoutMicros(); us > 0 {
		cctx, cancel = context.WithTimeout(ctx, time.Duration(min(us, uint64(maxTimeout/time.Microsecond)))*time.Microsecond)
	} else {
		cctx, cancel = context.WithCancel(ctx)
	}
	sc.calls[id] = cancel
	sc.wg.Add(1)
	s.queued.Add(1)
	sc.mu.Unlock()
	go sc.run(cctx, cancel, id, req.GetCompute(), size)
}

// maxTimeout bounds a call's timeout (a year: any real deadline).
const maxTimeout = 365 * 24 * time.Hour

// run is one call of the stream, from waiting for its slot to its answer.
func (sc *streamCalls) run(ctx context.Context, cancel context.CancelFunc, id uint64, req *pb.ComputeRequest, size int64) {
	s := sc.srv
	defer sc.wg.Done()
	defer cancel()
	var (
		res     *pb.ComputeResponse
		release = func() {}
	)
	c, err := s.begin(ctx, "Compute")
	func() {
		defer func() { err = s.end(c, recover(), err) }()
		c.onEnd(func() { s.quotas.give(size) })
		queued := true
		defer func() {
			if queued {
				s.queued.Add(-1)
			}
		}()
		if err != nil {
			c.in = size
			return
		}
		select {
		case sc.slots <- struct{}{}:
			c.onEnd(func() { <-sc.slots })
		case <-ctx.Done():
			c.in, err = size, status.FromContextError(ctx.Err()).Err()
			return
		}
		queued = false
		s.queued.Add(-1)
		res, err = s.computeFrom(withCall(ctx, c), c, gpuRequest{req}, size) // size: measured once, in start
		release = c.takeReply()
	}()
	sc.mu.Lock()
	delete(sc.calls, id)
	sc.mu.Unlock()
	sc.send(id, res, err)
	release()
}

// cancel ends the call id, if it is in flight.
func (sc *streamCalls) cancel(id uint64) {
	sc.mu.Lock()
	cancel := sc.calls[id]
	sc.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// send answers call id. A failed send means the client is gone; the
// stream's Recv sees it too.
func (sc *streamCalls) send(id uint64, res *pb.ComputeResponse, err error) {
	out := &pb.StreamResponse{Id: id, Compute: res}
	if err != nil {
		st := status.Convert(err)
		out = &pb.StreamResponse{Id: id, Error: &pb.Error{Code: uint32(st.Code()), Message: st.Message()}}
	}
	sc.sendMu.Lock()
	defer sc.sendMu.Unlock()
	sc.stream.Send(out)
}
