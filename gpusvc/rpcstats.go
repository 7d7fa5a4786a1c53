package gpusvc

import (
	"context"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
)

// rpcStats records the RPCs that never reach an interceptor: a unary
// request gRPC cannot decode (say, a string that is not UTF-8) fails before
// the interceptor runs, and so does a method the service does not have.
// Each is still one call, recorded once with its caller.
type rpcStats struct{ s *Server }

type rpcKey struct{}

// rpcState is one RPC's: begun once an interceptor has taken it over.
type rpcState struct {
	method string
	start  time.Time
	begun  atomic.Bool
	after  atomic.Pointer[func()] // run at End: what the reply held
}

// afterReply runs f when the RPC of ctx has ended, its reply sent; at once
// when ctx carries no RPC.
func afterReply(ctx context.Context, f func()) {
	if r, ok := ctx.Value(rpcKey{}).(*rpcState); ok {
		r.after.Store(&f)
		return
	}
	f()
}

func (h rpcStats) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	return context.WithValue(ctx, rpcKey{}, &rpcState{method: methodName(info.FullMethodName), start: time.Now()})
}

func (h rpcStats) HandleRPC(ctx context.Context, st stats.RPCStats) {
	end, ok := st.(*stats.End)
	if !ok {
		return
	}
	r, _ := ctx.Value(rpcKey{}).(*rpcState)
	if r == nil {
		return
	}
	if f := r.after.Swap(nil); f != nil {
		(*f)()
	}
	if r.begun.Load() {
		return
	}
	st2 := status.Convert(end.Error)
	rec := CallRecord{Time: r.start, Method: r.method, Duration: time.Since(r.start), Code: st2.Code(), Err: bounded(st2.Message(), maxErrorBytes)}
	if t, ok := ctx.Value(tappedKey{}).(tapped); ok && t.who != nil {
		rec.Caller = t.who.id
	}
	h.s.emit(rec)
}

// connKey holds the cancel function of a connection's context.
type connKey struct{}

// TagConn gives each connection a context that HandleConn cancels when the
// connection ends. gRPC derives every stream's context from it, and a
// stream the tap refuses is never cancelled by gRPC: its transport forgets
// the stream without calling its cancel function. With a client's
// deadline (grpc-timeout, up to years) that context's timer, in the
// runtime's timer heap, would hold the connection, its buffers and its
// caller's identity until the deadline passed; cancelled with its
// connection, it holds them no longer than the connection.
func (rpcStats) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	ctx, cancel := context.WithCancel(ctx)
	return context.WithValue(ctx, connKey{}, cancel)
}

// HandleConn cancels a connection's context when it ends (gRPC has closed
// the transport and cancelled every stream it still knew of).
func (rpcStats) HandleConn(ctx context.Context, st stats.ConnStats) {
	if _, ok := st.(*stats.ConnEnd); !ok {
		return
	}
	if cancel, ok := ctx.Value(connKey{}).(context.CancelFunc); ok {
		cancel()
	}
}

// markBegun tells the RPC's stats that an interceptor records it, and
// returns the name its record gives the method (fullMethod's, as TagRPC
// already worked it out).
func markBegun(ctx context.Context, fullMethod string) string {
	if r, ok := ctx.Value(rpcKey{}).(*rpcState); ok {
		r.begun.Store(true)
		return r.method
	}
	return methodName(fullMethod)
}
