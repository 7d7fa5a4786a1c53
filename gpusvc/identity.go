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
	key     string         // the quota key: stable ID, else node name
	name    string         // id.String(), for messages and logs
}

func newCaller(id overlay.Identity) *caller {
	return &caller{id: id, subject: Subject(id).Prepare(), key: quotaKey(id), name: id.String()}
}

// Subject is what the policy knows of an overlay identity.
func Subject(id overlay.Identity) policy.Subject {
	return policy.Subject{Node: id.Node, User: id.User, Tags: id.Tags, Caps: id.Caps, WireGuard: id.WireGuard}
}

func quotaKey(id overlay.Identity) string {
	if id.StableID != "" {
		return id.StableID
	}
	return id.Node
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

// ServerHandshake identifies the peer before gRPC reads anything from it,
// and refuses the connection when the peer already holds as many as it
// may (few for a peer the policy gives nothing: enough to be told why).
func (c overlayCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	s := c.srv
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	remote := conn.RemoteAddr().String()
	id, err := s.cfg.WhoIs(ctx, remote)
	if err != nil {
		return nil, nil, fmt.Errorf("gpusvc: identify %s: %w", remote, err)
	}
	who := newCaller(id)
	limit := s.cfg.MaxConnsPerCaller
	if !s.policy().Admits(who.subject).Allow {
		limit = deniedConns
	}
	release, err := s.admission.openConn(who, limit)
	if err != nil {
		s.refusals.add(who, "connect", err)
		return nil, nil, err
	}
	ci := &connIdentity{whois: s.cfg.WhoIs, ttl: s.cfg.IdentityTTL, remote: remote, cur: who, at: time.Now()}
	if s.cfg.WrapConn != nil {
		conn = s.cfg.WrapConn(conn, id)
		ci.class, _ = conn.(ClassSetter)
	}
	return &countedConn{Conn: conn, release: release}, overlayAuth{CommonAuthInfo: overlaySecurity, conn: ci}, nil
}

func (overlayCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "gpumesh-overlay"}
}
func (c overlayCreds) Clone() credentials.TransportCredentials { return c }
func (overlayCreds) OverrideServerName(string) error           { return nil }

// deniedConns is how many connections a peer the policy gives nothing may
// hold: one to be told why, one more for a client that reconnects.
const deniedConns = 2

// countedConn gives its caller's connection slot back when gRPC closes it.
type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	c.once.Do(c.release)
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
func (c *connIdentity) get(ctx context.Context) (*caller, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.at) < c.ttl {
		return c.cur, nil
	}
	id, err := c.whois(ctx, c.remote)
	if err != nil {
		return c.cur, fmt.Errorf("gpusvc: identify %s: %w", c.remote, err)
	}
	c.cur, c.at = newCaller(id), time.Now()
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
