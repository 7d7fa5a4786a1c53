package wg

import (
	"context"
	"net/netip"
	"strings"

	"github.com/gpumesh/gpumesh/overlay"
)

var _ overlay.PeerLister = (*Node)(nil)

// Peers lists the configuration's peers by name, with their single-address
// AllowedIPs as addresses. A static peer is always online (only traffic
// tells whether it answers); its path is direct once the device knows an
// endpoint for it (WireGuard has no relays), else unknown.
func (n *Node) Peers(ctx context.Context) ([]overlay.Peer, error) {
	s, err := n.ipcGet("peers")
	if err != nil {
		return nil, err
	}
	// The device lists peers by hex public key, with "endpoint=" once it
	// has one.
	withEndpoint := make(map[string]bool)
	var key string
	for _, line := range strings.Split(s, "\n") {
		k, v, _ := strings.Cut(line, "=")
		switch k {
		case "public_key":
			key = v
		case "endpoint":
			if _, err := netip.ParseAddrPort(v); err == nil && key != "" {
				withEndpoint[key] = true
			}
		}
	}
	out := make([]overlay.Peer, 0, len(n.peers.peers))
	for _, p := range n.peers.peers {
		op := overlay.Peer{Name: p.name, Addrs: append([]netip.Addr(nil), p.addrs...), Online: true}
		if withEndpoint[p.key.Hex()] {
			op.Path = overlay.PathDirect
		}
		out = append(out, op)
	}
	return out, nil
}
