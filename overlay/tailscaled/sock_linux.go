package tailscaled

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/gpumesh/gpumesh/overlay/tcpcc"
)

// control binds a TCP socket to the tailnet interface and sets its
// congestion control. Accepted connections inherit both from their
// listener.
func (n *Node) control(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, n.ifname); serr != nil {
			serr = fmt.Errorf("bind to %s: %w", n.ifname, serr)
			return
		}
		serr = tcpcc.Set(fd, n.congction)
	})
	if err != nil {
		return err
	}
	return serr
}

// controlListen is control for a listener, which also binds to its
// tailnet address before the interface holds it: tailscaled may add an
// IPv6 address after the IPv4 one (duplicate address detection), and
// a listener should not miss it.
func (n *Node) controlListen(network, address string, c syscall.RawConn) error {
	if err := n.control(network, address, c); err != nil {
		return err
	}
	var serr error
	err := c.Control(func(fd uintptr) {
		if network == "tcp6" {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, 1)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_FREEBIND, 1)
		}
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("free bind: %w", serr)
	}
	return nil
}

// controlDevice binds a socket to the tailnet interface only.
func (n *Node) controlDevice(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, n.ifname); serr != nil {
			serr = fmt.Errorf("bind to %s: %w", n.ifname, serr)
		}
	})
	if err != nil {
		return err
	}
	return serr
}
