package overlay

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"slices"
)

// Overlay is a node's view of the overlay network it has joined.
type Overlay interface {
	// Listen listens on the node's overlay addresses only. Nothing outside
	// the overlay (loopback, the host's interfaces) can reach it.
	Listen(network, addr string) (net.Listener, error)
	// Dial connects to addr ("host:port"; host is a peer's name or overlay IP).
	Dial(ctx context.Context, network, addr string) (net.Conn, error)
	// WhoIs identifies the peer at remoteAddr ("ip:port"), as a listener's
	// accepted connection reports it. It returns ErrUnknownPeer when the
	// address belongs to no peer.
	WhoIs(ctx context.Context, remoteAddr string) (Identity, error)
	// Close leaves the overlay. A second Close returns net.ErrClosed.
	Close() error
}

// ErrUnknownPeer is returned by WhoIs for an address no peer holds.
var ErrUnknownPeer = errors.New("overlay: unknown peer")

// Identity is who a peer is, as the overlay (not the peer) says.
type Identity struct {
	// Node is the peer's short node name ("laptop"), the name policies use.
	Node string `json:"node"`
	// FQDN is the full MagicDNS name ("laptop.tail-scale.ts.net"), if any.
	FQDN string `json:"fqdn,omitempty"`
	// StableID is the control plane's stable node ID, or the WireGuard
	// peer's public key in the plain WireGuard mode.
	StableID string `json:"stable_id"`
	// User is the owner's login name ("alice@example.com"); empty for
	// tagged nodes and WireGuard peers.
	User string `json:"user,omitempty"`
	// Tags are the node's ACL tags ("tag:ci").
	Tags []string `json:"tags,omitempty"`
	// Addrs are the peer's overlay addresses.
	Addrs []netip.Addr `json:"addrs,omitempty"`
	// Caps are the application capabilities the tailnet's policy grants
	// the peer towards this node, by capability name; each value is one
	// raw JSON object from a grant.
	Caps map[string][]json.RawMessage `json:"caps,omitempty"`
	// WireGuard is true when the identity comes from a static WireGuard
	// peer list rather than a tailnet control plane.
	WireGuard bool `json:"wireguard,omitempty"`
	// Pod is set when the peer is a Kubernetes agent the host's policy
	// trusts and the connection carries one of its pods: the pod as the
	// agent named it at the connection's start (gpusvc/preface). The
	// overlay never sets it; the other fields stay the agent's node.
	Pod *Pod `json:"pod,omitempty"`
}

// Pod is a Kubernetes pod behind a trusted agent, as the agent named it
// from the Kubernetes API.
type Pod struct {
	Namespace      string `json:"namespace"`
	ServiceAccount string `json:"service_account"`
	// Name is the pod's name; empty for a claim several pods share.
	Name string `json:"name,omitempty"`
	// UID is the pod's UID (a shared claim's UID for a shared claim):
	// what the host keys the pod's sessions and quotas by, with the agent.
	UID string `json:"uid"`
	// Allocation is the agent's tunnel the pod came through (a claim's or
	// a device's), for the record.
	Allocation string `json:"allocation,omitempty"`
}

// String names the pod: "k8s:NAMESPACE/NAME", or for a shared claim
// "k8s:NAMESPACE/claim:UID".
func (p *Pod) String() string {
	if p.Name == "" {
		return "k8s:" + p.Namespace + "/claim:" + p.UID
	}
	return "k8s:" + p.Namespace + "/" + p.Name
}

// HasTag reports whether id carries tag.
func (id Identity) HasTag(tag string) bool { return slices.Contains(id.Tags, tag) }

// String returns the name a log line should show for id: a pod as
// "k8s:NAMESPACE/NAME via NODE".
func (id Identity) String() string {
	if id.Pod != nil {
		node := id.Node
		if node == "" {
			node = id.StableID
		}
		return id.Pod.String() + " via " + node
	}
	if id.Node != "" {
		return id.Node
	}
	return id.StableID
}

// PeerPath is where the overlay sends one peer's packets.
type PeerPath struct {
	// Addr is the peer's overlay address, as WhoIs takes it.
	Addr netip.Addr
	// Endpoint is the peer's WireGuard endpoint on the underlay network,
	// where its encrypted packets go; not valid while they go through a
	// relay (DERP), which carries many peers' packets.
	Endpoint netip.AddrPort
}

// PeerPather is an Overlay that can say where it sends each peer's
// packets, so that a host's egress shaping can classify them by peer.
type PeerPather interface {
	PeerPaths(ctx context.Context) ([]PeerPath, error)
}
