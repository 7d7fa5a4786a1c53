package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/internal/human"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/overlay/forward"
	"github.com/gpumesh/gpumesh/pool"
)

// Pool targets ("tag:gpu", "gpu-a,gpu-b", "*") are accepted wherever a
// host name is: run, cp, status, doctor and up --forward. The pool's logic
// is in package pool; this file only wires it into the commands.

// peerNetwork is an overlay as a pool's network: its peer list where the
// overlay has one.
type peerNetwork struct{ overlay.Overlay }

// Peers passes on the overlay's peer list, for pool targets.
func (n peerNetwork) Peers(ctx context.Context) ([]overlay.Peer, error) {
	if pl, ok := n.Overlay.(overlay.PeerLister); ok {
		return pl.Peers(ctx)
	}
	return nil, errors.ErrUnsupported
}

// runOnPool is `gpumesh run TARGET KERNEL` for a pool target: the pool
// picks the host, and the line printed names it.
func runOnPool(ctx context.Context, w io.Writer, nw pool.Network, target, kernelName string, args []kernel.Arg, check, verbose bool) error {
	p, err := pool.Dial(ctx, pool.Config{Target: target, Network: nw, Logger: logger(verbose)})
	if err != nil {
		return err
	}
	defer p.Close()
	start := time.Now()
	res, host, err := p.ComputeRequest(ctx, computeRequest(kernelName, args))
	rtt := time.Since(start)
	if err != nil {
		return err
	}
	if len(res.GetOutputs()) == 0 {
		return fmt.Errorf("%s on %s: no output", kernelName, host)
	}
	got := gpusvc.TensorFromPB(res.GetOutputs()[0])
	line := fmt.Sprintf("%s %s → %v on %s (pool %s): round trip %s (compute %s)", kernelName, shapes(args), got.Shape, host, target,
		human.Duration(rtt), human.Duration(time.Duration(res.GetComputeNanos())))
	return printChecked(w, line, host, kernelName, args, got, check)
}

// parseForward reads one --forward: LISTEN=HOST[:PORT], or LISTEN=TARGET
// with a pool target, whose rule then carries the target as its host
// (the forwarder's dial hands it to the pool).
func parseForward(s string) (r forward.Rule, isPool bool, err error) {
	listen, target, _ := strings.Cut(s, "=")
	if !pool.IsTarget(target) {
		r, err = forward.ParseRule(s, gpusvc.DefaultPort)
		return r, false, err
	}
	if _, err := pool.ParseTarget(target); err != nil {
		return forward.Rule{}, false, fmt.Errorf("forward %q: %w", s, err)
	}
	// Check and normalise the listen side as any rule's.
	if r, err = forward.ParseRule(listen+"=pool", gpusvc.DefaultPort); err != nil {
		return forward.Rule{}, false, err
	}
	r.Target = net.JoinHostPort(target, strconv.Itoa(gpusvc.DefaultPort))
	return r, true, nil
}

// poolTargetOfRule is the pool target a rule made by parseForward names.
func poolTargetOfRule(r forward.Rule) string {
	host, _, _ := net.SplitHostPort(r.Target)
	return host
}

// forwardPools are the pools `up` forwards to, by rule target.
type forwardPools struct {
	targets []string
	pools   map[string]*pool.Pool // set once the node is up
}

// start starts a pool per target on nw; hosts may join later.
func (f *forwardPools) start(nw pool.Network, verbose bool) error {
	f.pools = make(map[string]*pool.Pool)
	for _, t := range f.targets {
		p, err := pool.New(pool.Config{Target: poolTargetOfRule(forward.Rule{Target: t}), Network: nw, Logger: logger(verbose)})
		if err != nil {
			f.close()
			return err
		}
		f.pools[t] = p
	}
	return nil
}

// dial hands a pool rule's connection to its pool.
func (f *forwardPools) dial(ctx context.Context, network, addr string) (net.Conn, bool, error) {
	p, ok := f.pools[addr]
	if !ok {
		return nil, false, nil
	}
	c, err := p.DialContext(ctx, network, addr)
	return c, true, err
}

func (f *forwardPools) close() {
	for _, p := range f.pools {
		p.Close()
	}
}

// cpPool is `gpumesh cp FILE TARGET:` for a pool target: it joins and
// starts a pool, through which the upload opens a session on the host the
// pool picks and fills a buffer there, on the pool's own connection to
// that host. closeAll closes the pool, then leaves the tailnet; the
// session stays open on its host, for later copies and programs.
func cpPool(ctx context.Context, tf *tailnetFlags, target, gpu string, joinTimeout time.Duration) (_ *poolUpload, closeAll func(), _ error) {
	cfg, err := tf.config()
	if err != nil {
		return nil, nil, err
	}
	ov, err := node.Join(ctx, node.JoinConfig{Tailnet: &cfg, Timeout: joinTimeout})
	if err != nil {
		return nil, nil, err
	}
	p, err := pool.Dial(ctx, pool.Config{Target: target, Network: peerNetwork{ov.Overlay}, GPU: gpu, Logger: logger(tf.verbose)})
	if err != nil {
		ov.Close()
		return nil, nil, err
	}
	return &poolUpload{p: p}, func() { p.Close(); ov.Close() }, nil
}

// poolUpload uploads to the host p picks, in a session p opens there.
type poolUpload struct {
	p *pool.Pool
	s *pool.Session // set by session
}

func (u *poolUpload) session(ctx context.Context, dst remoteRef) (remoteRef, error) {
	s, err := u.p.OpenSession(ctx)
	if err != nil {
		return dst, err
	}
	u.s = s
	dst.host, dst.session = s.Host(), s.ID()
	return dst, nil
}

func (u *poolUpload) upload(ctx context.Context, _ remoteRef, n uint64, r io.Reader) (uint64, error) {
	b, err := u.s.UploadFrom(ctx, n, r)
	return b.ID, err
}

// diagPool turns --host values into a pool target when they name one (a
// tag, "*", or more than one host).
func diagPool(hosts []string) (string, bool) {
	t := strings.Join(hosts, ",")
	return t, pool.IsTarget(t)
}
