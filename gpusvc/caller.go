package gpusvc

import "context"

// The server tells the backend who a call is for through the context, so
// that the Backend interfaces stay as they are: a backend that isolates
// callers from each other (the CUDA worker proxy runs one process per GPU
// and caller) reads CallerKey; others ignore it.

type callerKeyCtx struct{}

type sessionCtx struct{}

// WithCaller returns ctx carrying the caller's key: a stable name of the
// overlay identity the call is attributed to (the server's quota key).
func WithCaller(ctx context.Context, key string) context.Context {
	return context.WithValue(ctx, callerKeyCtx{}, key)
}

// CallerKey returns the key WithCaller set, or "" when none was set.
func CallerKey(ctx context.Context) string {
	k, _ := ctx.Value(callerKeyCtx{}).(string)
	return k
}

// WithSession returns ctx carrying the ID of the session a call runs in.
func WithSession(ctx context.Context, id uint64) context.Context {
	return context.WithValue(ctx, sessionCtx{}, id)
}

// SessionID returns the ID WithSession set, or 0 when none was set.
func SessionID(ctx context.Context) uint64 {
	id, _ := ctx.Value(sessionCtx{}).(uint64)
	return id
}
