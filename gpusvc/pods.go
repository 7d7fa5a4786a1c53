package gpusvc

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpumesh/gpumesh/gpusvc/preface"
	"github.com/gpumesh/gpumesh/overlay"
)

// Kubernetes pods, in the identify step.
//
// A pod reaches the host through gpumesh's Kubernetes agent, which opens a
// tailnet connection of its own for each of the pod's connections and
// writes a preface (gpusvc/preface) before any of the pod's bytes: the
// pod as the Kubernetes API names it. The host reads that preface, in the
// handshake, before gRPC reads anything, and only from a peer whose
// overlay identity the policy trusts as an agent (policy's kubernetes
// block): bounded (preface.MaxBody), with a deadline (prefaceTimeout), and
// answered with one reply frame. Then:
//
//   - a trusted agent's connection without a valid preface is refused;
//   - a connection from anyone else that starts with preface.Magic is
//     refused (a node claiming pods it may not name), and recorded once;
//     any other first bytes are handed on to gRPC as they came;
//   - a preface naming a pod makes the connection's identity that pod,
//     through that agent: the policy sees the pod (k8s: subjects), its
//     sessions and quotas are its own (keyed by the agent and the pod's
//     UID), and records name both;
//   - a release preface ends the pod's sessions (freeing their buffers)
//     and its connections through that agent at once, and refuses that
//     pod from then on (a UID is never reused).

// prefaceTimeout bounds reading a connection's first bytes.
const prefaceTimeout = 10 * time.Second

// Bounds on what the host remembers of released pods: a release is kept
// releasedFor, and at most maxReleased of them (the oldest go first).
const (
	releasedFor = time.Hour
	maxReleased = 16384
)

// errReleased ends a release preface's handshake: the connection carried
// no gRPC.
var errReleased = errors.New("gpusvc: a pod released; no gRPC on this connection")

// identifyPod reads what a connection starts with, as described above. It
// returns the identity (with the pod, when a trusted agent named one) and
// the bytes it read that belong to gRPC (head), to be read again first.
// Every refusal is recorded, and answered to the peer when it spoke the
// preface's protocol.
//
// trusted says whether the policy trusts the peer as an agent.
func (s *Server) identifyPod(conn net.Conn, id overlay.Identity, trusted bool) (_ overlay.Identity, head []byte, err error) {
	if err := conn.SetReadDeadline(time.Now().Add(prefaceTimeout)); err != nil {
		return id, nil, fmt.Errorf("gpusvc: %s: %w", id, err)
	}
	defer conn.SetReadDeadline(time.Time{})
	var m [len(preface.Magic)]byte
	n, rerr := io.ReadFull(conn, m[:])
	magic := n == len(m) && string(m[:]) == preface.Magic
	if !trusted {
		if magic {
			err := status.Errorf(codes.PermissionDenied, "gpumesh: %s is not a Kubernetes agent %s's policy trusts (its kubernetes block's trusted_agents): it cannot name pods", id, s.cfg.Host)
			return id, nil, s.refusePreface(conn, id, err)
		}
		if rerr != nil && n == 0 {
			return id, nil, fmt.Errorf("gpusvc: %s sent nothing: %w", id, rerr)
		}
		// Not ours: gRPC reads these bytes again, and fails the rest as
		// it would have.
		return id, m[:n], nil
	}
	if !magic {
		err := status.Errorf(codes.PermissionDenied, "gpumesh: %s is a trusted Kubernetes agent: each of its connections must start with its preface (%s)", id, preface.Magic)
		return id, nil, s.refusePreface(conn, id, err)
	}
	p, err := preface.ReadBody(conn)
	if err != nil {
		return id, nil, s.refusePreface(conn, id, status.Errorf(codes.InvalidArgument, "gpumesh: %s's preface: %v", id, err))
	}
	if p.Pod == nil {
		// The agent's own connection (its probes).
		return id, nil, s.acceptPreface(conn, id)
	}
	pod := *p.Pod
	id.Pod = &pod
	who := newCaller(id)
	if p.Op == preface.Release {
		s.releasePod(conn, who)
		return id, nil, errReleased
	}
	if s.pods.released(who.key) {
		return id, nil, s.refusePreface(conn, id, podGone(who))
	}
	return id, nil, s.acceptPreface(conn, id)
}

func podGone(who *caller) error {
	return status.Errorf(codes.PermissionDenied, "gpumesh: %s was released by its agent (the pod is gone): it is not served again", who.name)
}

// refusePreface answers a refused preface, records the refusal and
// returns it.
func (s *Server) refusePreface(conn net.Conn, id overlay.Identity, err error) error {
	conn.SetWriteDeadline(time.Now().Add(prefaceTimeout))
	preface.WriteReply(conn, err)
	s.refusals.add(newCaller(id), "connect", err)
	return err
}

// acceptPreface answers an accepted preface.
func (s *Server) acceptPreface(conn net.Conn, id overlay.Identity) error {
	if err := conn.SetWriteDeadline(time.Now().Add(prefaceTimeout)); err != nil {
		return fmt.Errorf("gpusvc: %s: %w", id, err)
	}
	defer conn.SetWriteDeadline(time.Time{})
	if err := preface.WriteReply(conn, nil); err != nil {
		return fmt.Errorf("gpusvc: answering %s's preface: %w", id, err)
	}
	return nil
}

// releasePod ends what the pod who holds through its agent: it is marked
// released first (no new connection or session of it is accepted), then
// its connections are closed (ending their calls) and its sessions ended
// (freeing their buffers; one a call still reads is freed when that call
// ends). It answers the agent once that is done, and records it.
func (s *Server) releasePod(conn net.Conn, who *caller) {
	start := time.Now()
	conns := s.pods.release(who.key, start)
	for _, c := range conns {
		c.Close()
	}
	sessions, buffers := s.sessions.endOwner(who.key)
	s.acceptPreface(conn, who.id)
	s.emit(CallRecord{
		Time: start, Caller: who.id, Method: "release", Duration: time.Since(start), Code: codes.OK,
		Reason: fmt.Sprintf("the agent released the pod: %d connections closed, %d sessions and %d buffers freed", len(conns), sessions, buffers),
	})
	s.log.Info("pod released", "caller", who.name, "connections", len(conns), "sessions", sessions, "buffers", buffers)
}

// pods holds the connections of pods, to close them when their pod is
// released, and the pods released. Its zero value is ready.
type pods struct {
	mu    sync.Mutex
	conns map[string]map[*countedConn]struct{} // by pod key; guarded by mu
	gone  map[string]time.Time                 // released pods by key, when; guarded by mu
}

// track adds a pod's connection, unless its pod was released; the
// connection leaves when it closes.
func (p *pods) track(who *caller, c *countedConn) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, gone := p.gone[who.key]; gone {
		return podGone(who)
	}
	if p.conns == nil {
		p.conns = make(map[string]map[*countedConn]struct{})
	}
	set := p.conns[who.key]
	if set == nil {
		set = make(map[*countedConn]struct{})
		p.conns[who.key] = set
	}
	set[c] = struct{}{}
	c.untrack = func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		delete(set, c)
		if len(p.conns[who.key]) == 0 {
			delete(p.conns, who.key)
		}
	}
	return nil
}

// released reports whether the pod key was released.
func (p *pods) released(key string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, gone := p.gone[key]
	return gone
}

// release marks the pod key released at now and returns its connections,
// for the caller to close.
func (p *pods) release(key string, now time.Time) []*countedConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.gone == nil {
		p.gone = make(map[string]time.Time)
	}
	if len(p.gone) >= maxReleased {
		p.forgetLocked(now)
	}
	p.gone[key] = now
	var out []*countedConn
	for c := range p.conns[key] {
		out = append(out, c)
	}
	return out
}

// forgetLocked drops releases older than releasedFor, and while too many
// remain, the oldest.
func (p *pods) forgetLocked(now time.Time) {
	for k, at := range p.gone {
		if now.Sub(at) > releasedFor {
			delete(p.gone, k)
		}
	}
	for len(p.gone) >= maxReleased {
		var oldest string
		var at time.Time
		for k, t := range p.gone {
			if oldest == "" || t.Before(at) {
				oldest, at = k, t
			}
		}
		delete(p.gone, oldest)
	}
}

// prefixConn reads head again before the rest of the connection: the
// bytes identifyPod read to see whether they were a preface.
type prefixConn struct {
	net.Conn
	head []byte // guarded by being read only by the connection's reader
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.head) > 0 {
		n := copy(b, c.head)
		c.head = c.head[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}
