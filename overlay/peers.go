package overlay

import (
	"context"
	"net/netip"
	"slices"
	"time"
)

// Path says how an overlay carries one peer's packets now.
type Path int

const (
	// PathUnknown: no packets have gone to the peer recently, so the
	// overlay has not chosen a path yet.
	PathUnknown Path = iota
	// PathDirect: UDP straight between the two machines.
	PathDirect
	// PathRelayed: through a relay (a DERP server, a peer relay), which
	// adds latency and shares its bandwidth with other peers.
	PathRelayed
)

func (p Path) String() string {
	switch p {
	case PathDirect:
		return "direct"
	case PathRelayed:
		return "relayed"
	}
	return "unknown"
}

// Peer is one entry of an overlay's own peer list, as the overlay (the
// tailnet's control plane, or the WireGuard configuration) says.
type Peer struct {
	// Name is the peer's short name ("gpu-a"), as WhoIs reports it and
	// Dial accepts it. Empty for an unnamed WireGuard peer.
	Name string
	// FQDN is the full MagicDNS name, if any.
	FQDN string
	// Tags are the peer's ACL tags ("tag:gpu"); WireGuard peers have none.
	Tags []string
	// Addrs are the peer's overlay addresses.
	Addrs []netip.Addr
	// Online is the control plane's word that the peer is connected. A
	// static WireGuard peer is always listed as online: only traffic tells.
	Online bool
	// Path is how the peer's packets travel now.
	Path Path
	// RTT is the overlay's own measure of the round trip to the peer, or 0
	// where it keeps none (neither overlay/tsnet nor overlay/wg does today;
	// callers measure their own).
	RTT time.Duration
}

// HasTag reports whether p carries tag.
func (p Peer) HasTag(tag string) bool { return slices.Contains(p.Tags, tag) }

// Addr returns the peer's first IPv4 overlay address, else its first
// address, else the zero Addr.
func (p Peer) Addr() netip.Addr {
	for _, a := range p.Addrs {
		if a.Is4() {
			return a
		}
	}
	if len(p.Addrs) > 0 {
		return p.Addrs[0]
	}
	return netip.Addr{}
}

// PeerLister is an Overlay that can list its peers, so that a client can
// find GPU hosts by tag or name without being told their addresses. The
// list changes as peers come and go; ask again.
type PeerLister interface {
	Peers(ctx context.Context) ([]Peer, error)
}

// MarshalText writes the path as its name, for JSON.
func (p Path) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText reads a path's name.
func (p *Path) UnmarshalText(b []byte) error {
	switch string(b) {
	case "direct":
		*p = PathDirect
	case "relayed":
		*p = PathRelayed
	default:
		*p = PathUnknown
	}
	return nil
}
