package tsnet

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"tailscale.com/ipn/ipnstate"

	"github.com/gpumesh/gpumesh/overlay"
)

var _ overlay.PeerLister = (*Node)(nil)

// Peers lists the node's tailnet peers from its own backend's status: the
// control plane's netmap, with each peer's tags, addresses, online state
// and current path. It sends nothing on the network.
func (n *Node) Peers(ctx context.Context) ([]overlay.Peer, error) {
	if n.lc == nil {
		return nil, errors.New("tsnet: Peers before Up")
	}
	st, err := n.lc.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("tsnet: peers: %w", err)
	}
	out := make([]overlay.Peer, 0, len(st.Peer))
	for _, ps := range st.Peer {
		out = append(out, peerOf(ps))
	}
	return out, nil
}

// peerOf converts one peer's status. Its name is the first label of its
// MagicDNS name, as WhoIs names it.
func peerOf(ps *ipnstate.PeerStatus) overlay.Peer {
	p := overlay.Peer{
		FQDN:   strings.TrimSuffix(ps.DNSName, "."),
		Addrs:  append(ps.TailscaleIPs[:0:0], ps.TailscaleIPs...),
		Online: ps.Online,
	}
	p.Name, _, _ = strings.Cut(p.FQDN, ".")
	if p.Name == "" {
		p.Name = ps.HostName
	}
	if ps.Tags != nil {
		p.Tags = ps.Tags.AsSlice()
	}
	switch {
	case ps.CurAddr != "":
		p.Path = overlay.PathDirect
	case ps.PeerRelay != "" || (ps.Active && ps.Relay != ""):
		p.Path = overlay.PathRelayed
	}
	return p
}
