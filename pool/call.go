package pool

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpumesh/gpumesh/gpusvc"
	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
)

// errClosed is what work on a closed pool fails with.
var errClosed = net.ErrClosed

func (p *Pool) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// failure sorts a failed call by what it proves.
type failure int

const (
	failOther   failure = iota // the host answered: the call's own error
	failDenied                 // the host's policy refused it: it did not run
	failNotSent                // no connection carried it: it did not run
	failHost                   // the host failed or was lost under it: it may have run
)

// classify sorts err, the failure of a call leased on a host whose loss
// closes lost.
func classify(err error, lost <-chan struct{}) failure {
	select {
	case <-lost:
		return failHost
	default:
	}
	switch status.Code(err) {
	case codes.PermissionDenied:
		return failDenied
	case codes.Unavailable, codes.Canceled:
		if notSent(err) {
			return failNotSent
		}
		return failHost
	}
	return failOther
}

// notSent reports whether err proves a call never left this process: gRPC
// could not establish a connection to the host (the dial failed or was
// refused; a call on a connection that is not established fails without
// being sent), or the host's client was closed before it was sent.
func notSent(err error) bool {
	msg := status.Convert(err).Message()
	for _, s := range []string{"Error while dialing", "connection refused", "gpusvc: client closed", "no such peer"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// retryable reports whether a call of kernelName that failed with f may
// run again on another host.
func (p *Pool) retryable(f failure, kernelName string) bool {
	switch f {
	case failDenied, failNotSent:
		return true
	case failHost:
		return p.cfg.Idempotent(kernelName)
	}
	return false
}

// ComputeRequest runs one stateless call (no session, no buffers) on the
// host placement picks, and retries it once on another host when that
// host was unavailable and the call provably did not run or its kernel is
// idempotent (see the package doc). It returns the response and the name
// of the host that ran it. Errors keep their gRPC status code.
func (p *Pool) ComputeRequest(ctx context.Context, req *pb.ComputeRequest) (*pb.ComputeResponse, string, error) {
	name := req.GetKernel()
	if req.GetSession() != 0 || req.GetOutBuffer() != 0 || usesBuffers(req) {
		return nil, "", fmt.Errorf("pool %s: %s: a call on buffers runs in their session (Session.Compute), never placed", p.target, name)
	}
	if req.GetGpu() == "" && p.cfg.GPU != "" {
		// A request of our own: the caller's is left as it was.
		req = &pb.ComputeRequest{Kernel: name, Args: req.GetArgs(), Gpu: p.cfg.GPU}
	}
	w := work{what: name, kernels: []string{name}, gpu: req.GetGpu()}
	var first error
	for attempt := 0; ; attempt++ {
		l, err := p.place(ctx, w)
		if err != nil {
			if first != nil {
				return nil, "", fmt.Errorf("%w; then %v", first, err)
			}
			return nil, "", err
		}
		res, err := l.client.ComputeRequest(ctx, req)
		l.release(durationOf(res.GetComputeNanos()))
		if err == nil {
			return res, l.h.name, nil
		}
		if ctx.Err() != nil {
			return nil, l.h.name, fmt.Errorf("pool %s: %s on %s: %w", p.target, name, l.h.name, err)
		}
		f := classify(err, l.lost)
		switch f {
		case failDenied:
			l.h.forget(name, w.gpu)
		case failNotSent, failHost:
			l.h.suspect(err)
		}
		if f == failHost && isClosed(l.lost) {
			err = fmt.Errorf("%w: %w", ErrHostLost, err)
		}
		err = fmt.Errorf("pool %s: %s on %s: %w", p.target, name, l.h.name, err)
		if first != nil {
			err = fmt.Errorf("%w; then %w", first, err)
		}
		if attempt > 0 || !p.retryable(f, name) {
			return nil, l.h.name, err
		}
		p.log.Info("pool: retrying on another host", "pool", p.target.String(), "kernel", name, "host", l.h.name, "err", err)
		first = err
		w.exclude = append(w.exclude, l.h.name)
	}
}

func usesBuffers(req *pb.ComputeRequest) bool {
	for _, a := range req.GetArgs() {
		if a.GetBuffer() != nil {
			return true
		}
	}
	return false
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// Compute runs a built-in kernel and returns its output tensor. A call
// without buffer arguments is placed (and may fail over, see
// ComputeRequest); one with buffer arguments runs on the host of the
// pool's own session, the one Alloc and Upload use.
func (p *Pool) Compute(ctx context.Context, kernelName string, args ...kernel.Arg) (kernel.Tensor, error) {
	for _, a := range args {
		if a.Kind == kernel.ArgBuffer {
			s, err := p.session(ctx)
			if err != nil {
				return kernel.Tensor{}, err
			}
			return s.Compute(ctx, kernelName, args...)
		}
	}
	res, _, err := p.ComputeRequest(ctx, &pb.ComputeRequest{Kernel: kernelName, Args: gpusvc.ArgsToPB(args)})
	if err != nil {
		return kernel.Tensor{}, err
	}
	return firstOutput(res), nil
}

func firstOutput(res *pb.ComputeResponse) kernel.Tensor {
	if len(res.GetOutputs()) == 0 {
		return kernel.Tensor{}
	}
	return gpusvc.TensorFromPB(res.GetOutputs()[0])
}

// MatMul multiplies a (n×k) by b (k×m) on a host of the pool.
func (p *Pool) MatMul(ctx context.Context, a, b [][]float32) ([][]float32, error) {
	out, err := kernel.MatMul(ctx, p.Compute, a, b)
	if err != nil {
		return nil, fmt.Errorf("pool: %w", err)
	}
	return out, nil
}

// session returns the pool's own session, opening it on first use. Once
// its host is lost it stays lost: its buffers were there.
func (p *Pool) session(ctx context.Context) (*Session, error) {
	p.implicitMu.Lock()
	defer p.implicitMu.Unlock()
	p.mu.Lock()
	s, closed := p.implicit, p.closed
	p.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("pool %s: %w", p.target, errClosed)
	}
	if s != nil {
		return s, nil
	}
	s, err := p.OpenSession(ctx)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.implicit = s
	p.mu.Unlock()
	return s, nil
}

// Alloc reserves n zeroed bytes in the pool's own session, which opens on
// the first use (Alloc, Upload, or a Compute with buffer arguments) on the
// host placement picks, and stays there: once that host is lost, these
// calls fail with ErrHostLost (its buffers were there). OpenSession gives
// sessions of their own.
func (p *Pool) Alloc(ctx context.Context, n uint64) (Buffer, error) {
	s, err := p.session(ctx)
	if err != nil {
		return Buffer{}, err
	}
	return s.Alloc(ctx, n)
}

// Upload allocates a buffer holding data in the pool's own session.
func (p *Pool) Upload(ctx context.Context, data []byte) (Buffer, error) {
	s, err := p.session(ctx)
	if err != nil {
		return Buffer{}, err
	}
	return s.UploadFrom(ctx, uint64(len(data)), bytes.NewReader(data))
}

// Write copies data into b, a buffer of the pool's own session.
func (p *Pool) Write(ctx context.Context, b Buffer, off uint64, data []byte) error {
	s, err := p.session(ctx)
	if err != nil {
		return err
	}
	return s.Write(ctx, b, off, data)
}

// Read returns n bytes of b (n = 0: to its end), a buffer of the pool's
// own session.
func (p *Pool) Read(ctx context.Context, b Buffer, off, n uint64) ([]byte, error) {
	s, err := p.session(ctx)
	if err != nil {
		return nil, err
	}
	return s.Read(ctx, b, off, n)
}

// Free releases b, a buffer of the pool's own session.
func (p *Pool) Free(ctx context.Context, b Buffer) error {
	s, err := p.session(ctx)
	if err != nil {
		return err
	}
	return s.Free(ctx, b)
}

// durationOf converts a wire duration in nanoseconds.
func durationOf(ns int64) time.Duration { return time.Duration(max(ns, 0)) }
