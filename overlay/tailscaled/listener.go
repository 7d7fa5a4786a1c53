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
// itself to WhoIs. No peer can hold those addresses (tailscaled drops a
// peer's packets from addresses that are not its own), and none is on
// loopback.
func fromSelf(self []netip.Addr, c net.Conn) bool {
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		return true
	}
	ip := ap.Addr().Unmap()
	return ip.IsLoopback() || slices.Contains(self, ip)
}
