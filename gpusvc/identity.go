package gpusvc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/policy"
)

// WhoIsFunc says who holds a remote overlay address.
type WhoIsFunc func(ctx context.Context, remoteAddr string) (overlay.Identity, error)

// ClassSetter is implemented by a connection that Config.WrapConn returns
// when it schedules the host's replies by QoS class: after each call's
// policy decision the server tells it the decision's class ("" is the
// default class), so that QoS, quotas and the audit log follow the one
// decision of that call.
type ClassSetter interface {
	SetClass(class string)
}

// caller is an identified peer: its overlay identity and what the policy
// and the quotas know it by. It is immutable; a refreshed identity is a new
// caller.
type caller struct {
	id      overlay.Identity
	subject policy.Subject // prepared: capability JSON decoded once
	key     string         // the quota key: stable ID, else node name; a pod's adds its UID
	name    string         // id.String(), for messages and logs
	// agent is, for a pod, the subject of the agent it calls through,
	// which the policy must trust for as long as the pod calls.
	agent policy.Subject
}

func newCaller(id overlay.Identity) *caller {
	c := &caller{id: id, subject: Subject(id).Prepare(), key: quotaKey(id), name: id.String()}
	if id.Pod != nil {
		id.Pod = nil
		c.agent = Subject(id)
	}
	return c
}

// Subject is what the policy knows of an overlay identity: for a pod
// behind a trusted agent, the pod and the agent's node.
func Subject(id overlay.Identity) policy.Subject {
	s := policy.Subject{Node: id.Node, User: id.User, Tags: id.Tags, Caps: id.Caps, WireGuard: id.WireGuard}
	if p := id.Pod; p != nil {
		s.Pod = &policy.Pod{Namespace: p.Namespace, ServiceAccount: p.ServiceAccount, Name: p.Name}
	}
	return s
}

// quotaKey is what an identity's sessions, buffers and quotas are kept
// under: its node, and for a pod the pod's UID as well (scoped by the
// agent: another agent naming the same UID is another caller).
func quotaKey(id overlay.Identity) string {
	k := id.StableID
	if k == "" {
		k = id.Node
	}
	if id.Pod != nil {
		k += "/k8s:" + id.Pod.UID
	}
	return k
}

// overlayCreds are transport credentials for connections that already run
// inside the overlay: WireGuard gives privacy and integrity, and the server
// learns the peer's identity from the overlay at handshake time.
type overlayCreds struct {
	srv *Server // nil on the client side
}

var _ credentials.TransportCredentials = overlayCreds{}

func (c overlayCreds) ClientHandshake(_ context.Context, _ string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return conn, overlayAuth{CommonAuthInfo: overlaySecurity}, nil
}

// overlaySecurity: the overlay encrypts and authenticates every packet.
var overlaySecurity = credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}

// ServerHandshake identifies the peer before gRPC reads anything from it
// (the overlay says who the peer is; a trusted Kubernetes agent's preface
// says which of its pods the connection is for, see pods.go), and refuses
// the connection when the peer already holds as many as it may (few for a
// peer the policy gives nothing: enough to be told why).
func (c overlayCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	s := c.srv
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	remote := conn.RemoteAddr().String()
	id, err := s.cfg.WhoIs(ctx, remote)
	if err != nil {
		return nil, nil, fmt.Errorf("gpusvc: identify %s: %w", remote, err)
	}
	// A peer that is not a trusted agent takes its connection slot before
	// anything it sends is read: it cannot hold more connections waiting
	// in the preface's read than it may hold at all. A trusted agent
	// takes one of its agent-wide slots first (MaxConnsPerAgent, for its
	// pods and itself together), then its pod's, known once its preface
	// is read.
	who := newCaller(id)
	agent := s.policy().TrustsAgent(who.subject)
	var release func()
	if agent {
		release, err = s.admission.openAgentConn(id, s.cfg.MaxConnsPerAgent)
	} else {
		release, err = s.openConn(who)
	}
	if err != nil {
		if agent {
			s.refusals.add(who, "connect", err)
		}
		return nil, nil, err
	}
	id, head, err := s.identifyPod(conn, id, agent)
	if err != nil {
		release()
		return nil, nil, err
	}
	if agent {
		who = newCaller(id) // the pod its preface named, or the agent itself
		own, err := s.openConn(who)
		if err != nil {
			release()
			return nil, nil, err
		}
		agentSlot := release
		release = func() { own(); agentSlot() }
	}
	ci := &connIdentity{whois: s.cfg.WhoIs, policy: s.cfg.Policy, ttl: s.cfg.IdentityTTL, remote: remote, cur: who, at: time.Now()}
	if s.cfg.WrapConn != nil {
		conn = s.cfg.WrapConn(conn, id)
		ci.class, _ = conn.(ClassSetter)
	}
	if len(head) > 0 {
		conn = &prefixConn{Conn: conn, head: head}
	}
	cc := &countedConn{Conn: conn, release: release}
	if id.Pod != nil {
		if err := s.pods.track(who, cc); err != nil {
			cc.Close()
			s.refusals.add(who, "connect", err)
			return nil, nil, err
		}
	}
	return cc, overlayAuth{CommonAuthInfo: overlaySecurity, conn: ci}, nil
}

// openConn takes a connection slot for who: few for a peer the policy
// gives nothing. A refusal is recorded.
func (s *Server) openConn(who *caller) (release func(), err error) {
	limit := s.cfg.MaxConnsPerCaller
	if !s.policy().Admits(who.subject).Allow {
		limit = deniedConns
	}
	release, err = s.admission.openConn(who, limit)
	if err != nil {
		s.refusals.add(who, "connect", err)
		return nil, err
	}
	return release, nil
}

func (overlayCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "gpumesh-overlay"}
}
func (c overlayCreds) Clone() credentials.TransportCredentials { return c }
func (overlayCreds) OverrideServerName(string) error           { return nil }

// deniedConns is how many connections a peer the policy gives nothing may
// hold: one to be told why, one more for a client that reconnects.
const deniedConns = 2

// countedConn gives its caller's connection slot back when gRPC closes it
// (or a pod's release closes it).
type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
	untrack func() // a pod's connection leaves the pods' registry; nil otherwise
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.release()
		if c.untrack != nil {
			c.untrack()
		}
	})
	return c.Conn.Close()
}

// overlayAuth is the AuthInfo of a connection inside the overlay.
type overlayAuth struct {
	credentials.CommonAuthInfo
	conn *connIdentity // nil on the client side
}

func (overlayAuth) AuthType() string { return "gpumesh-overlay" }

// connIdentity caches the overlay's answer for one connection.
type connIdentity struct {
	whois  WhoIsFunc
	policy func() *policy.Policy
	ttl    time.Duration
	remote string
	class  ClassSetter // the connection's QoS wrapper; nil when none

	mu  sync.Mutex
	cur *caller   // guarded by mu
	at  time.Time // when cur was fetched; guarded by mu
}

// get returns the connection's caller, asking the overlay again when the
// cached answer is older than the TTL, so that tag and capability changes
// in the tailnet apply to open connections too. When the overlay cannot
// answer, it returns the last caller known with the error, so that the
// failure is still recorded under a name.
//
// A pod's connection keeps its pod; the agent it comes through must still
// be one the policy trusts (its tags, or the policy, may have changed), or
// the call is refused.
func (c *connIdentity) get(ctx context.Context) (*caller, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.at) >= c.ttl {
		id, err := c.whois(ctx, c.remote)
		if err != nil {
			return c.cur, fmt.Errorf("gpusvc: identify %s: %w", c.remote, err)
		}
		id.Pod = c.cur.id.Pod
		c.cur, c.at = newCaller(id), time.Now()
	}
	if c.cur.id.Pod != nil && !c.policy().TrustsAgent(c.cur.agent) {
		return c.cur, fmt.Errorf("gpusvc: %s is no longer a Kubernetes agent the policy trusts: its pods' calls are refused", c.cur.agent)
	}
	return c.cur, nil
}

// setClass tells the connection's QoS wrapper the class of a decision.
func (c *connIdentity) setClass(class string) {
	if c != nil && c.class != nil {
		c.class.SetClass(class)
	}
}

var errNoIdentity = errors.New("gpusvc: connection has no overlay identity")

// connOf returns the identity of the connection a call or stream came on.
func connOf(ctx context.Context) *connIdentity {
	pr, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	a, ok := pr.AuthInfo.(overlayAuth)
	if !ok {
		return nil
	}
	return a.conn
}
