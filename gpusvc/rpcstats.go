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

func (rpcStats) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (rpcStats) HandleConn(context.Context, stats.ConnStats)                       {}

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
