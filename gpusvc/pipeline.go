package gpusvc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/policy"
)

// The pipeline every call goes through (see the package doc): the
// interceptors identify the caller and record the call once, whatever
// happens in between, panics included; the handlers bound, resolve,
// authorize (one decision, through call.authorize), allocate and run.

// call is one call in progress: who made it, what it asked, the decision,
// and what it holds; its record is made from it when it ends. A call is
// used by one goroutine at a time.
type call struct {
	start  time.Time
	method string
	conn   *connIdentity
	who    *caller // nil only if identification failed with nothing known
	tap    *tapped // what the tap handle decided, for the first call of an RPC

	kernel  string // bounded, for the record
	gpu     string // canonical when resolved, else bounded as given
	in, out int64

	decided  bool
	decision policy.Decision
	undo     []func() // quota slots and reservations, given back at the end
	reply    []func() // given back once the reply is sent (or at the end)
}

type callKey struct{}

func withCall(ctx context.Context, c *call) context.Context {
	return context.WithValue(ctx, callKey{}, c)
}

// callOf returns the call a handler runs for.
func callOf(ctx context.Context) *call {
	c, _ := ctx.Value(callKey{}).(*call)
	return c
}

// begin identifies the caller of a new call. The returned error is the
// call's answer when identification failed; the call is then still ended
// and recorded (under the connection's last known identity, if any).
func (s *Server) begin(ctx context.Context, method string) (*call, error) {
	c := &call{start: time.Now(), method: method, conn: connOf(ctx)}
	if loadOf(method) {
		s.inFlight.Add(1)
	}
	if t, ok := ctx.Value(tappedKey{}).(tapped); ok && !usedTap(ctx) {
		c.who, c.tap = t.who, &t
		return c, nil
	}
	if c.conn == nil {
		return c, status.Error(codes.Unauthenticated, errNoIdentity.Error())
	}
	who, err := c.conn.get(ctx)
	c.who = who
	if err != nil {
		return c, status.Error(codes.Unauthenticated, err.Error())
	}
	return c, nil
}

// usedTap: the calls of a Stream after its first identify themselves.
type tapUsedKey struct{}

func usedTap(ctx context.Context) bool { return ctx.Value(tapUsedKey{}) != nil }

// end gives back what the call holds, turns a panic into Internal, and
// records the call. It returns the call's final error.
func (s *Server) end(c *call, panicked any, err error) error {
	if panicked != nil {
		s.log.Error("call panicked", "method", c.method, "caller", c.name(), "panic", fmt.Sprint(panicked), "stack", string(debug.Stack()))
		err = status.Errorf(codes.Internal, "gpumesh: the host failed this call (a bug, logged on the host)")
	}
	for i := len(c.undo) - 1; i >= 0; i-- {
		c.undo[i]()
	}
	c.undo = nil
	c.replied()
	if loadOf(c.method) {
		s.inFlight.Add(-1)
	}
	s.record(c, err)
	return err
}

func (c *call) name() string {
	if c.who == nil {
		return ""
	}
	return c.who.name
}

// onEnd runs f when the call ends.
func (c *call) onEnd(f func()) { c.undo = append(c.undo, f) }

// onReply runs f once the call's reply has been handed to the transport
// (its output is held until then), or when the call ends, if that is
// sooner (a failed call sends no reply).
func (c *call) onReply(f func()) { c.reply = append(c.reply, f) }

// takeReply hands the onReply functions to whoever sends the reply.
func (c *call) takeReply() func() {
	fs := c.reply
	c.reply = nil
	return func() {
		for _, f := range fs {
			f()
		}
	}
}

func (c *call) replied() { c.takeReply()() }

// unaryEntry is the interceptor of every unary call.
func (s *Server) unaryEntry(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (res any, err error) {
	c, err := s.begin(ctx, markBegun(ctx, info.FullMethod))
	defer func() { err = s.end(c, recover(), err) }()
	if err != nil {
		return nil, err
	}
	res, err = h(withCall(ctx, c), req)
	if err == nil {
		afterReply(ctx, c.takeReply()) // the stats handler's End: the reply is sent
	}
	return res, err
}

// streamEntry is the interceptor of every streaming call. Write and Read
// are one call each; a Stream is many, each begun and ended by the Stream
// handler itself, and only a Stream refused as a whole is recorded as one.
func (s *Server) streamEntry(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
	method := markBegun(ss.Context(), info.FullMethod)
	if method == "Stream" {
		defer func() {
			if p := recover(); p != nil {
				c, _ := s.begin(ss.Context(), method)
				err = s.end(c, p, nil)
			}
		}()
		return h(srv, ss)
	}
	c, err := s.begin(ss.Context(), method)
	defer func() { err = s.end(c, recover(), err) }()
	if err != nil {
		return err
	}
	return h(srv, &callStream{ServerStream: ss, ctx: withCall(ss.Context(), c)})
}

// callStream carries the call in its context.
type callStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (cs *callStream) Context() context.Context { return cs.ctx }

// decide records d as the call's one policy decision and tells the
// connection's QoS wrapper its class.
func (c *call) decide(d policy.Decision) {
	c.decided, c.decision = true, d
	c.conn.setClass(d.Class)
}

// decideAdmits decides a call that needs only some right on the host
// (Devices, Explain): the tap's answer for the RPC's first call.
func (s *Server) decideAdmits(c *call) policy.Decision {
	d := policy.Decision{}
	if c.tap != nil {
		d = c.tap.admit
	} else {
		d = s.policy().Admits(c.who.subject)
	}
	c.decide(d)
	return d
}

// denied is the answer to a call the policy refuses.
func (s *Server) denied(d policy.Decision, why string) error {
	return status.Errorf(codes.PermissionDenied, "gpumesh: denied by %s's policy: %s%s", s.cfg.Host, d.Reason, why)
}

// authorize makes the call's one policy decision on r, checks its size
// against the caller's max_request, and takes a slot of the caller's
// quota under the deciding rule, given back when the call ends.
func (s *Server) authorize(c *call, r policy.Request) error {
	return s.admitDecision(c, s.policy().Evaluate(c.who.subject, r), r.Bytes, "")
}

// admitDecision applies an already made decision as authorize does; why
// is added to a denial's message.
func (s *Server) admitDecision(c *call, d policy.Decision, bytes int64, why string) error {
	c.decide(d)
	if !d.Allow {
		return s.denied(d, why)
	}
	if max := d.Limits.MaxRequestBytes; max > 0 && bytes > max {
		return status.Errorf(codes.ResourceExhausted, "gpumesh: request of %d bytes is over %s's max_request of %d bytes (rule %q)",
			bytes, c.who.name, max, d.Rule)
	}
	release, err := s.quotas.acquire(c.who, d)
	if err != nil {
		return err
	}
	c.onEnd(release)
	return nil
}

// resolveGPU resolves the call's GPU and notes it for the record.
func (c *call) resolveGPU(s *Server, name string) (device, error) {
	dev, err := s.devices.resolve(name)
	if err != nil {
		c.gpu = bounded(name, 40)
		return device{}, err
	}
	c.gpu = dev.name
	return dev, nil
}

// record reports a finished call to the logger and OnCall.
func (s *Server) record(c *call, err error) {
	r := CallRecord{
		Time: c.start, Method: c.method, Kernel: c.kernel, GPU: c.gpu,
		BytesIn: c.in, BytesOut: c.out, Duration: time.Since(c.start), Code: status.Code(err),
	}
	if c.who != nil {
		r.Caller = c.who.id
	}
	if c.decided {
		r.Allow, r.Rule, r.Reason, r.Class = c.decision.Allow, c.decision.Rule, c.decision.Reason, c.decision.Class
	}
	if err != nil {
		r.Err = bounded(status.Convert(err).Message(), maxErrorBytes)
	}
	s.emitCall(c, r)
}

func (s *Server) emit(r CallRecord) {
	level := slog.LevelDebug
	if r.Code != codes.OK {
		level = slog.LevelInfo
	}
	if s.log.Enabled(context.Background(), level) {
		s.log.Log(context.Background(), level, "call", "caller", r.Caller.String(), "method", r.Method,
			"kernel", r.Kernel, "gpu", r.GPU, "allow", r.Allow, "rule", r.Rule,
			"code", r.Code.String(), "dur", r.Duration, "err", r.Err, "suppressed", r.Suppressed)
	}
	if s.cfg.OnCall != nil {
		s.cfg.OnCall(r)
	}
}

// statusOf maps backend errors to gRPC status errors.
func statusOf(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codes.Internal
	switch {
	case errors.Is(err, kernel.ErrInvalid), errors.Is(err, kernel.ErrUnknownKernel), errors.Is(err, ErrNoDevice):
		code = codes.InvalidArgument
	case errors.Is(err, ErrUnsupported):
		code = codes.Unimplemented
	case errors.Is(err, ErrNoBuffer):
		code = codes.NotFound
	case errors.Is(err, ErrOutOfMemory), errors.Is(err, ErrBusy):
		code = codes.ResourceExhausted
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	return status.Errorf(code, "gpumesh: %v", err)
}
