package tailscaled

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// chooseCongestion resolves Config.Congestion against the kernel: ""
// picks BBR where the kernel offers it to this process, "system" leaves
// the default, a name must be offered.
func chooseCongestion(want string) (string, error) {
	switch want {
	case "system":
		return "", nil
	case "":
		if offered("bbr") {
			return "bbr", nil
		}
		return "", nil
	}
	if !offered(want) {
		return "", fmt.Errorf("TCP congestion control %q: the kernel offers this process %v (modprobe tcp_%s, or add it to net.ipv4.tcp_allowed_congestion_control)", want, available(), want)
	}
	return want, nil
}

// offered reports whether this process may set cc on its sockets: the
// kernel has it, and it is allowed to all or the process may set any
// (CAP_NET_ADMIN; root stands for it here).
func offered(cc string) bool {
	if !slices.Contains(available(), cc) {
		return false
	}
	return os.Geteuid() == 0 || slices.Contains(sysctlList("net/ipv4/tcp_allowed_congestion_control"), cc)
}

func available() []string { return sysctlList("net/ipv4/tcp_available_congestion_control") }

func sysctlList(name string) []string {
	b, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		return nil
	}
	return strings.Fields(string(b))
}

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
		if n.congction != "" {
			if serr = unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, n.congction); serr != nil {
				serr = fmt.Errorf("congestion control %s: %w", n.congction, serr)
			}
		}
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

// CongestionOf reports the congestion control of a TCP connection.
func CongestionOf(sc syscall.Conn) (string, error) {
	rc, err := sc.SyscallConn()
	if err != nil {
		return "", err
	}
	var cc string
	var gerr error
	err = rc.Control(func(fd uintptr) {
		cc, gerr = unix.GetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION)
	})
	if err != nil {
		return "", err
	}
	return strings.TrimRight(cc, "\x00"), gerr
}
