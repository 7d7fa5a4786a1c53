package dscp

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// MarkFD sets c on the socket fd, keeping the ECN bits already set there:
// IP_TOS on an IPv4 socket; IPV6_TCLASS on an IPv6 one, and its IP_TOS
// too, which a dual-stack socket's IPv4 traffic carries. A socket that is
// neither IPv4 nor IPv6 gives an error wrapping errors.ErrUnsupported.
func MarkFD(fd int, c Code) error {
	if err := check(c); err != nil {
		return err
	}
	level, opt, err := tosOption(fd)
	if err != nil {
		return fmt.Errorf("dscp: mark %s: %w", c, err)
	}
	old, err := unix.GetsockoptInt(fd, level, opt)
	if err != nil {
		return fmt.Errorf("dscp: mark %s: getsockopt tos: %w", c, err)
	}
	if tos := int(c.TOS(byte(old))); tos != old {
		if err := unix.SetsockoptInt(fd, level, opt, tos); err != nil {
			return fmt.Errorf("dscp: mark %s: setsockopt tos %#x: %w", c, tos, err)
		}
	}
	if level == unix.IPPROTO_IPV6 {
		// Failing here only means the socket sends no IPv4: ignored.
		if old4, err := unix.GetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TOS); err == nil {
			unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TOS, int(c.TOS(byte(old4))))
		}
	}
	return nil
}

// TOSOf returns the TOS (IPv4) or traffic-class (IPv6) byte set on the
// socket behind sc: its DSCP and ECN bits.
func TOSOf(sc syscall.Conn) (byte, error) {
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("dscp: read tos: %w", err)
	}
	var tos int
	var terr error
	if err := rc.Control(func(fd uintptr) {
		level, opt, err := tosOption(int(fd))
		if err != nil {
			terr = err
			return
		}
		tos, terr = unix.GetsockoptInt(int(fd), level, opt)
	}); err != nil {
		return 0, fmt.Errorf("dscp: read tos: %w", err)
	}
	if terr != nil {
		return 0, fmt.Errorf("dscp: read tos: %w", terr)
	}
	return byte(tos), nil
}

// tosOption returns the socket option holding fd's TOS byte.
func tosOption(fd int) (level, opt int, err error) {
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return 0, 0, fmt.Errorf("so_domain: %w", err)
	}
	switch domain {
	case unix.AF_INET:
		return unix.IPPROTO_IP, unix.IP_TOS, nil
	case unix.AF_INET6:
		return unix.IPPROTO_IPV6, unix.IPV6_TCLASS, nil
	}
	return 0, 0, fmt.Errorf("socket domain %d: %w", domain, errors.ErrUnsupported)
}

// Sockets returns the open sockets of this process, as the targets of
// their /proc/self/fd links ("socket:[12345]"): a snapshot to pass to
// MarkUDPPort as the sockets to skip.
func Sockets() (map[string]bool, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, fmt.Errorf("dscp: list sockets: %w", err)
	}
	m := make(map[string]bool, len(ents))
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil {
			m[l] = true
		}
	}
	return m, nil
}

// MarkUDPPort sets c, as MarkFD does, on every UDP socket of this process
// bound to the local port, except those in skip (a Sockets snapshot; nil
// skips none). It finds them through /proc/self/fd, so it reaches sockets
// opened by code that offers no hook (tsnet's magicsock, wireguard-go's
// StdNetBind), and needs no privilege. It returns how many sockets it
// marked; a descriptor closed meanwhile is skipped.
func MarkUDPPort(port uint16, c Code, skip map[string]bool) (int, error) {
	if err := check(c); err != nil {
		return 0, err
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, fmt.Errorf("dscp: mark udp port %d: %w", port, err)
	}
	n := 0
	var errs []error
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if len(skip) > 0 {
			if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err != nil || skip[l] {
				continue
			}
		}
		// The fd may be closed or reused meanwhile; every check below is
		// made on the socket as it is now.
		if !isUDPOnPort(fd, port) {
			continue
		}
		if err := MarkFD(fd, c); err != nil {
			if errors.Is(err, unix.EBADF) {
				continue
			}
			errs = append(errs, err)
			continue
		}
		n++
	}
	if err := errors.Join(errs...); err != nil {
		return n, fmt.Errorf("dscp: mark udp port %d: %w", port, err)
	}
	return n, nil
}

// isUDPOnPort reports whether fd is a UDP socket bound to the local port.
func isUDPOnPort(fd int, port uint16) bool {
	if typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || typ != unix.SOCK_DGRAM {
		return false
	}
	if proto, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL); err != nil || proto != unix.IPPROTO_UDP {
		return false
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return false
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return sa.Port == int(port)
	case *unix.SockaddrInet6:
		return sa.Port == int(port)
	}
	return false
}

// Check proves on loopback that this process can mark its packets: it
// marks a UDP socket with c, sends one datagram to a second socket that
// reports the received TOS byte (IP_RECVTOS), and returns that byte. It
// needs no privilege and sends nothing beyond 127.0.0.1.
func Check(c Code) (byte, error) {
	if err := check(c); err != nil {
		return 0, err
	}
	tap, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return 0, fmt.Errorf("dscp: check marking: %w", err)
	}
	defer tap.Close()
	rc, err := tap.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("dscp: check marking: %w", err)
	}
	var serr error
	rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVTOS, 1) })
	if serr != nil {
		return 0, fmt.Errorf("dscp: check marking: ip_recvtos: %w", serr)
	}
	snd, err := net.DialUDP("udp4", nil, tap.LocalAddr().(*net.UDPAddr))
	if err != nil {
		return 0, fmt.Errorf("dscp: check marking: %w", err)
	}
	defer snd.Close()
	if err := Mark(snd, c); err != nil {
		return 0, err
	}
	if _, err := snd.Write([]byte("gpumesh-dscp-check")); err != nil {
		return 0, fmt.Errorf("dscp: check marking: send: %w", err)
	}
	tap.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf, oob := make([]byte, 64), make([]byte, 64)
	_, oobn, _, _, err := tap.ReadMsgUDP(buf, oob)
	if err != nil {
		return 0, fmt.Errorf("dscp: check marking: receive: %w", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return 0, fmt.Errorf("dscp: check marking: %w", err)
	}
	for _, m := range msgs {
		if m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_TOS && len(m.Data) > 0 {
			if m.Data[0]>>2 != c.Value() {
				return m.Data[0], fmt.Errorf("dscp: check marking: received tos %#02x, want %s", m.Data[0], c)
			}
			return m.Data[0], nil
		}
	}
	return 0, errors.New("dscp: check marking: no tos control message")
}
