//go:build linux

package wg

import (
	"fmt"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

// dscpBind is a conn.Bind whose UDP sockets carry a DSCP in the outer IP
// header. conn.StdNetBind has no hook into its socket creation, so after
// Open it finds the sockets Open created — UDP sockets that did not exist
// before and are bound to the port Open returned — and sets IP_TOS or
// IPV6_TCLASS on them. A socket option lives on the socket, so every
// datagram sent from it, GSO segments included, carries the mark.
type dscpBind struct {
	conn.Bind
	tos  int // DSCP << 2; ECN bits zero
	logf func(string, ...any)
}

// openMu serialises Opens of all dscpBinds in the process, so that two
// binds opening the same port in different network namespaces at once
// cannot take each other's sockets.
var openMu sync.Mutex

func newDSCPBind(inner conn.Bind, dscp uint8, logf func(string, ...any)) conn.Bind {
	return &dscpBind{Bind: inner, tos: int(dscp) << 2, logf: logf}
}

func (b *dscpBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	openMu.Lock()
	defer openMu.Unlock()
	before, err := socketInodes()
	if err != nil {
		return nil, 0, fmt.Errorf("wg: dscp: list sockets: %w", err)
	}
	fns, actual, err := b.Bind.Open(port)
	if err != nil {
		return fns, actual, err
	}
	n, err := setTOS(before, actual, b.tos)
	if err == nil && n == 0 {
		err = fmt.Errorf("no socket found on port %d", actual)
	}
	if err != nil {
		b.Bind.Close()
		return nil, 0, fmt.Errorf("wg: dscp: set TOS on UDP port %d: %w", actual, err)
	}
	b.logf("wg: outer DSCP %d (TOS 0x%02x) on %d socket(s), UDP port %d", b.tos>>2, b.tos, n, actual)
	return fns, actual, nil
}

// socketInodes returns the link targets ("socket:[123]") of the process's
// socket descriptors, by descriptor.
func socketInodes() (map[string]bool, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, err
	}
	m := make(map[string]bool, len(ents))
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil {
			m[l] = true
		}
	}
	return m, nil
}

// setTOS sets tos on the UDP sockets bound to port that are not in before,
// and returns how many it set.
func setTOS(before map[string]bool, port uint16, tos int) (int, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		l, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil || before[l] {
			continue
		}
		if t, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || t != unix.SOCK_DGRAM {
			continue
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			continue
		}
		switch sa := sa.(type) {
		case *unix.SockaddrInet4:
			if sa.Port == int(port) {
				if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TOS, tos); err != nil {
					return n, err
				}
				n++
			}
		case *unix.SockaddrInet6:
			if sa.Port == int(port) {
				if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_TCLASS, tos); err != nil {
					return n, err
				}
				n++
			}
		}
	}
	return n, nil
}
