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
)

// WhoIsFunc says who holds a remote overlay address.
type WhoIsFunc func(ctx context.Context, remoteAddr string) (overlay.Identity, error)

// overlayCreds are transport credentials for connections that already run
// inside the overlay: WireGuard gives privacy and integrity, and the server
// learns the peer's identity from the overlay at handshake time.
type overlayCreds struct {
	whois WhoIsFunc // nil on the client side
	ttl   time.Duration
	wrap  func(net.Conn, overlay.Identity) net.Conn // optional, server side
}

var _ credentials.TransportCredentials = overlayCreds{}

func (c overlayCreds) ClientHandshake(_ context.Context, _ string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return conn, overlayAuth{CommonAuthInfo: overlaySecurity}, nil
}

// overlaySecurity: the overlay encrypts and authenticates every packet.
var overlaySecurity = credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}

func (c overlayCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	remote := conn.RemoteAddr().String()
	id, err := c.whois(ctx, remote)
	if err != nil {
		return nil, nil, fmt.Errorf("gpusvc: identify %s: %w", remote, err)
	}
	p := &peerIdentity{whois: c.whois, ttl: c.ttl, remote: remote, id: id, at: time.Now()}
	if c.wrap != nil {
		conn = c.wrap(conn, id)
	}
	return conn, overlayAuth{CommonAuthInfo: overlaySecurity, peer: p}, nil
}

func (overlayCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "gpumesh-overlay"}
}
func (c overlayCreds) Clone() credentials.TransportCredentials { return c }
func (overlayCreds) OverrideServerName(string) error           { return nil }

// overlayAuth is the AuthInfo of a connection inside the overlay.
type overlayAuth struct {
	credentials.CommonAuthInfo
	peer *peerIdentity // nil on the client side
}

func (overlayAuth) AuthType() string { return "gpumesh-overlay" }

// peerIdentity caches the overlay's answer for one connection.
type peerIdentity struct {
	whois  WhoIsFunc
	ttl    time.Duration
	remote string

	mu sync.Mutex
	id overlay.Identity // guarded by mu
	at time.Time        // when id was fetched; guarded by mu
}

// get returns the connection's identity, asking the overlay again when the
// cached answer is older than the TTL, so that tag and capability changes
// in the tailnet apply to open connections too.
func (p *peerIdentity) get(ctx context.Context) (overlay.Identity, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if time.Since(p.at) < p.ttl {
		return p.id, nil
	}
	id, err := p.whois(ctx, p.remote)
	if err != nil {
		return overlay.Identity{}, fmt.Errorf("gpusvc: identify %s: %w", p.remote, err)
	}
	p.id, p.at = id, time.Now()
	return id, nil
}

var errNoIdentity = errors.New("gpusvc: connection has no overlay identity")

// callerIdentity returns the identity of the peer that made the call in ctx.
func callerIdentity(ctx context.Context) (overlay.Identity, error) {
	pr, ok := peer.FromContext(ctx)
	if !ok {
		return overlay.Identity{}, errNoIdentity
	}
	a, ok := pr.AuthInfo.(overlayAuth)
	if !ok || a.peer == nil {
		return overlay.Identity{}, errNoIdentity
	}
	return a.peer.get(ctx)
}
