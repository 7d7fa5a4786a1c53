// Package localapi turns a Tailscale backend's LocalAPI answers (WhoIs,
// Status) into the overlay's types. The embedded node (overlay/tsnet) and
// the system's tailscaled (overlay/tailscaled) both speak LocalAPI, so
// they name peers and identities the same way.
package localapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"tailscale.com/client/local"
	"tailscale.com/ipn/ipnstate"

	"github.com/gpumesh/gpumesh/overlay"
)

// WhoIs asks the backend behind lc who holds remoteAddr ("ip:port"). An
// address no peer holds is overlay.ErrUnknownPeer.
func WhoIs(ctx context.Context, lc *local.Client, remoteAddr string) (overlay.Identity, error) {
	w, err := lc.WhoIs(ctx, remoteAddr)
	if err != nil {
		if errors.Is(err, local.ErrPeerNotFound) {
			return overlay.Identity{}, fmt.Errorf("%w: %s", overlay.ErrUnknownPeer, remoteAddr)
		}
		return overlay.Identity{}, fmt.Errorf("whois %s: %w", remoteAddr, err)
	}
	if w.Node == nil {
		return overlay.Identity{}, fmt.Errorf("%w: %s", overlay.ErrUnknownPeer, remoteAddr)
	}
	id := overlay.Identity{
		FQDN:     strings.TrimSuffix(w.Node.Name, "."),
		StableID: string(w.Node.StableID),
		Tags:     append([]string(nil), w.Node.Tags...),
	}
	id.Node, _, _ = strings.Cut(id.FQDN, ".")
	if id.Node == "" {
		id.Node = w.Node.ComputedName
	}
	if w.UserProfile != nil && len(w.Node.Tags) == 0 {
		id.User = w.UserProfile.LoginName
	}
	for _, p := range w.Node.Addresses {
		id.Addrs = append(id.Addrs, p.Addr())
	}
	if len(w.CapMap) > 0 {
		id.Caps = make(map[string][]json.RawMessage, len(w.CapMap))
		for name, vals := range w.CapMap {
			for _, v := range vals {
				id.Caps[string(name)] = append(id.Caps[string(name)], json.RawMessage(v))
			}
		}
	}
	return id, nil
}

// Peers lists the backend's tailnet peers from its status: the control
// plane's netmap, with each peer's tags, addresses, online state and
// current path. It sends nothing on the network.
func Peers(ctx context.Context, lc *local.Client) ([]overlay.Peer, error) {
	st, err := lc.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("peers: %w", err)
	}
	out := make([]overlay.Peer, 0, len(st.Peer))
	for _, ps := range st.Peer {
		out = append(out, PeerOf(ps))
	}
	return out, nil
}

// PeerOf converts one peer's status. Its name is the first label of its
// MagicDNS name, as WhoIs names it.
func PeerOf(ps *ipnstate.PeerStatus) overlay.Peer {
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

// PeerPaths reports each peer's tailnet address and, when the path to it
// is direct, its current WireGuard endpoint (it changes as peers roam;
// ask again).
func PeerPaths(ctx context.Context, lc *local.Client) ([]overlay.PeerPath, error) {
	st, err := lc.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("peer paths: %w", err)
	}
	var out []overlay.PeerPath
	for _, p := range st.Peer {
		if len(p.TailscaleIPs) == 0 {
			continue
		}
		pp := overlay.PeerPath{Addr: p.TailscaleIPs[0]}
		if ep, err := netip.ParseAddrPort(p.CurAddr); err == nil {
			pp.Endpoint = ep
		}
		out = append(out, pp)
	}
	return out, nil
}
