package tcpcc

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Choose resolves a node's setting against the kernel: "" picks BBR where
// the kernel offers it to this process (else the default, ""), System
// leaves the default, any other name must be offered.
func Choose(want string) (string, error) {
	switch want {
	case System:
		return "", nil
	case "":
		if Offered("bbr") {
			return "bbr", nil
		}
		return "", nil
	}
	if !Offered(want) {
		return "", fmt.Errorf("TCP congestion control %q: the kernel offers this process %v (modprobe tcp_%s, or add it to net.ipv4.tcp_allowed_congestion_control)", want, Available(), want)
	}
	return want, nil
}

// Offered reports whether this process may set cc on its sockets: the
// kernel has it, and it is allowed to all or the process may set any
// (CAP_NET_ADMIN; root stands for it here).
func Offered(cc string) bool {
	if !slices.Contains(Available(), cc) {
		return false
	}
	return os.Geteuid() == 0 || slices.Contains(sysctlList("net/ipv4/tcp_allowed_congestion_control"), cc)
}

// Available lists the congestion controls the kernel has.
func Available() []string { return sysctlList("net/ipv4/tcp_available_congestion_control") }

// Default is the system's default congestion control, of this process's
// network namespace.
func Default() string {
	if l := sysctlList("net/ipv4/tcp_congestion_control"); len(l) == 1 {
		return l[0]
	}
	return ""
}

// Other returns a congestion control this process may set that is not
// the system's default (reno, which every kernel has, else cubic), so that
// a check can tell a socket that asked for it from one that did not; ""
// if there is none.
func Other() string {
	for _, cc := range []string{"reno", "cubic"} {
		if cc != Default() && Offered(cc) {
			return cc
		}
	}
	return ""
}

func sysctlList(name string) []string {
	b, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		return nil
	}
	return strings.Fields(string(b))
}

// Set sets the congestion control of the TCP socket fd; "" leaves it.
func Set(fd uintptr, cc string) error {
	if cc == "" {
		return nil
	}
	if err := unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, cc); err != nil {
		return fmt.Errorf("congestion control %s: %w", cc, err)
	}
	return nil
}

// Control is a net.Dialer's or net.ListenConfig's Control that sets cc
// ("" leaves the default). Accepted connections inherit it from their
// listener.
func Control(cc string) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = Set(fd, cc) }); err != nil {
			return err
		}
		return serr
	}
}

// Of reports the congestion control of a TCP connection.
func Of(sc syscall.Conn) (string, error) {
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
