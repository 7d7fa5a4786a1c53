package wg

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/gpumesh/gpumesh/overlay/wg/wgconfig"
)

func peerLabel(p wgconfig.Peer) string {
	if p.Name != "" {
		return p.Name
	}
	return p.PublicKey.String()
}

func resolveEndpoint(ctx context.Context, hostport string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("endpoint %q: %w", hostport, err)
	}
	pn, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("endpoint %q: bad port", hostport)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return netip.AddrPortFrom(a.Unmap(), uint16(pn)), nil
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("endpoint %q: %w", hostport, err)
	}
	if len(addrs) == 0 {
		return netip.AddrPort{}, fmt.Errorf("endpoint %q: no addresses", hostport)
	}
	// Prefer IPv4, as wg(8) does when a name has both.
	best := addrs[0]
	for _, a := range addrs {
		if a.Unmap().Is4() {
			best = a
			break
		}
	}
	return netip.AddrPortFrom(best.Unmap(), uint16(pn)), nil
}

func parseRemote(s string) (netip.Addr, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, errors.New("not an ip:port or ip")
	}
	return a.Unmap(), nil
}

// families reports which IP versions network ("tcp", "tcp4", ...) allows;
// base is "tcp" or "" for tcp and udp.
func families(network, base string) (v4, v6 bool, err error) {
	switch network {
	case "tcp", "udp":
		v4, v6 = true, true
	case "tcp4", "udp4":
		v4 = true
	case "tcp6", "udp6":
		v6 = true
	default:
		return false, false, fmt.Errorf("unsupported network %q", network)
	}
	if base != "" && !strings.HasPrefix(network, base) {
		return false, false, fmt.Errorf("unsupported network %q", network)
	}
	return v4, v6, nil
}

// resolve turns addr ("name:port" or "ip:port") into an overlay address
// some peer holds.
func (n *Node) resolve(network, addr string) (netip.AddrPort, error) {
	want4, want6, err := families(network, "")
	if err != nil {
		return netip.AddrPort{}, err
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return netip.AddrPort{}, err
	}
	pn, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad port %q", port)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		ip = ip.Unmap()
		if (ip.Is4() && !want4) || (ip.Is6() && !want6) {
			return netip.AddrPort{}, fmt.Errorf("%s is not a %s address", ip, network)
		}
		if _, ok := n.peers.lookup(ip); !ok {
			return netip.AddrPort{}, fmt.Errorf("%w: no peer's AllowedIPs contain %s", ErrNoPeer, ip)
		}
		return netip.AddrPortFrom(ip, uint16(pn)), nil
	}
	p, ok := n.peers.byName(host)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("%w: no peer named %q", ErrNoPeer, host)
	}
	for _, a := range p.addrs {
		if (a.Is4() && want4) || (a.Is6() && want6) {
			return netip.AddrPortFrom(a, uint16(pn)), nil
		}
	}
	return netip.AddrPort{}, fmt.Errorf("%w: peer %q has no single-address AllowedIPs for %s", ErrNoPeer, host, network)
}
