package tailscaled

import (
	"net"
	"net/netip"
	"slices"
)

// fromSelf reports whether c comes from this machine's own stack rather
// than through tailscaled, given the node's tailnet addresses. The kernel
// delivers a local connection to a socket bound to the tailnet interface
// too, and one from the node's own tailnet address would be the node
// itself to WhoIs. A peer's packets come from its own tailnet address
// (tailscaled drops the others), which is no address of this machine's:
// so a connection from loopback, from the node's addresses or from any
// address an interface here holds is this machine's own.
func fromSelf(self []netip.Addr, c net.Conn) bool {
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		return true
	}
	ip := ap.Addr().Unmap()
	if ip.IsLoopback() || slices.Contains(self, ip) {
		return true
	}
	local, err := net.InterfaceAddrs()
	if err != nil {
		return true // cannot tell: refuse, as a listener on the overlay only should
	}
	for _, a := range local {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Unmap() == ip {
			return true
		}
	}
	return false
}
