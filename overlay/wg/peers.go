package wg

import (
	"net/netip"
	"strings"

	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/overlay/wg/wgconfig"
)

// peerTable maps overlay addresses and names to peers. It is immutable
// after newPeerTable.
type peerTable struct {
	peers []peerInfo
}

type peerInfo struct {
	name     string
	key      wgconfig.Key
	prefixes []netip.Prefix
	addrs    []netip.Addr // the single-address AllowedIPs
}

func newPeerTable(f *wgconfig.File) *peerTable {
	t := &peerTable{}
	for _, p := range f.Peers {
		pi := peerInfo{name: p.Name, key: p.PublicKey, prefixes: p.AllowedIPs}
		for _, pfx := range p.AllowedIPs {
			if pfx.IsSingleIP() {
				pi.addrs = append(pi.addrs, pfx.Addr())
			}
		}
		t.peers = append(t.peers, pi)
	}
	return t
}

// lookup returns the peer whose AllowedIPs hold ip with the longest prefix,
// the peer wireguard-go would route ip to and accept ip from.
func (t *peerTable) lookup(ip netip.Addr) (*peerInfo, bool) {
	ip = ip.Unmap().WithZone("")
	var best *peerInfo
	bestBits := -1
	for i := range t.peers {
		for _, pfx := range t.peers[i].prefixes {
			if pfx.Bits() > bestBits && pfx.Contains(ip) {
				best, bestBits = &t.peers[i], pfx.Bits()
			}
		}
	}
	return best, best != nil
}

// byName returns the peer named name (case-insensitive).
func (t *peerTable) byName(name string) (*peerInfo, bool) {
	for i := range t.peers {
		if t.peers[i].name != "" && strings.EqualFold(t.peers[i].name, name) {
			return &t.peers[i], true
		}
	}
	return nil, false
}

func (p *peerInfo) identity() overlay.Identity {
	return overlay.Identity{
		Node:      p.name,
		StableID:  p.key.String(),
		Addrs:     append([]netip.Addr(nil), p.addrs...),
		WireGuard: true,
	}
}
