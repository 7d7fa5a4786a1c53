package qos

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

// MarkUDPPort sets the DSCP of every UDP socket of this process bound to
// the local port, keeping each socket's ECN bits: IP_TOS on IPv4 sockets,
// IPV6_TCLASS (and IP_TOS, for IPv4-mapped traffic) on IPv6 ones. It finds
// the sockets through /proc/self/fd, so it reaches sockets opened by code
// that offers no hook (tsnet's magicsock), and needs no privilege. It
// returns how many sockets were marked.
func MarkUDPPort(port uint16, dscp uint8) (int, error) {
	if dscp > MaxDSCP {
		return 0, fmt.Errorf("qos: mark udp port %d: dscp %d: %w", port, dscp, ErrBadDSCP)
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, fmt.Errorf("qos: mark udp port %d: %w", port, err)
	}
	n := 0
	var errs []error
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		// The fd may be closed or reused meanwhile; every check below is
		// made on the socket as it is now, and a vanished fd is skipped.
		if typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || typ != unix.SOCK_DGRAM {
			continue
		}
		if proto, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL); err != nil || proto != unix.IPPROTO_UDP {
			continue
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			continue
		}
		switch sa := sa.(type) {
		case *unix.SockaddrInet4:
			if sa.Port != int(port) {
				continue
			}
		case *unix.SockaddrInet6:
			if sa.Port != int(port) {
				continue
			}
		default:
			continue
		}
		if err := markFD(fd, dscp); err != nil {
			if errors.Is(err, unix.EBADF) {
				continue
			}
			errs = append(errs, err)
			continue
		}
		n++
	}
	if err := errors.Join(errs...); err != nil {
		return n, fmt.Errorf("qos: mark udp port %d: %w", port, err)
	}
	return n, nil
}

// MarkConn sets the DSCP on one socket (the WireGuard Bind's, say),
// keeping its ECN bits, as MarkUDPPort does.
func MarkConn(c syscall.Conn, dscp uint8) error {
	if dscp > MaxDSCP {
		return fmt.Errorf("qos: mark conn: dscp %d: %w", dscp, ErrBadDSCP)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("qos: mark conn: %w", err)
	}
	var merr error
	if err := rc.Control(func(fd uintptr) { merr = markFD(int(fd), dscp) }); err != nil {
		return fmt.Errorf("qos: mark conn: %w", err)
	}
	if merr != nil {
		return fmt.Errorf("qos: mark conn: %w", merr)
	}
	return nil
}

// ConnTOS returns the TOS (IPv4) or traffic-class (IPv6) byte set on a
// socket.
func ConnTOS(c syscall.Conn) (byte, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("qos: conn tos: %w", err)
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
		return 0, fmt.Errorf("qos: conn tos: %w", err)
	}
	if terr != nil {
		return 0, fmt.Errorf("qos: conn tos: %w", terr)
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

// markFD sets dscp on fd, preserving the ECN bits already set there.
func markFD(fd int, dscp uint8) error {
	level, opt, err := tosOption(fd)
	if err != nil {
		return err
	}
	old, err := unix.GetsockoptInt(fd, level, opt)
	if err != nil {
		return fmt.Errorf("getsockopt tos: %w", err)
	}
	tos := int(TOS(dscp, byte(old)))
	if tos != old {
		if err := unix.SetsockoptInt(fd, level, opt, tos); err != nil {
			return fmt.Errorf("setsockopt tos %#x: %w", tos, err)
		}
	}
	if level == unix.IPPROTO_IPV6 {
		// A dual-stack socket sends IPv4-mapped traffic with the IPv4 TOS.
		// Failing here only means the socket sends no IPv4: ignored.
		if old4, err := unix.GetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TOS); err == nil {
			unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TOS, int(TOS(dscp, byte(old4))))
		}
	}
	return nil
}

// CheckMarking proves on loopback that this process can mark its packets:
// it marks a UDP socket with dscp, sends one datagram to a second socket
// that reports the received TOS byte (IP_RECVTOS), and returns that byte.
// It needs no privilege and sends nothing beyond 127.0.0.1.
func CheckMarking(dscp uint8) (byte, error) {
	tap, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return 0, fmt.Errorf("qos: check marking: %w", err)
	}
	defer tap.Close()
	rc, err := tap.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("qos: check marking: %w", err)
	}
	var serr error
	rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVTOS, 1) })
	if serr != nil {
		return 0, fmt.Errorf("qos: check marking: ip_recvtos: %w", serr)
	}
	snd, err := net.DialUDP("udp4", nil, tap.LocalAddr().(*net.UDPAddr))
	if err != nil {
		return 0, fmt.Errorf("qos: check marking: %w", err)
	}
	defer snd.Close()
	if err := MarkConn(snd, dscp); err != nil {
		return 0, err
	}
	if _, err := snd.Write([]byte("gpumesh-qos-check")); err != nil {
		return 0, fmt.Errorf("qos: check marking: send: %w", err)
	}
	tap.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf, oob := make([]byte, 64), make([]byte, 64)
	_, oobn, _, _, err := tap.ReadMsgUDP(buf, oob)
	if err != nil {
		return 0, fmt.Errorf("qos: check marking: receive: %w", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return 0, fmt.Errorf("qos: check marking: %w", err)
	}
	for _, m := range msgs {
		if m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_TOS && len(m.Data) > 0 {
			if m.Data[0]>>2 != dscp {
				return m.Data[0], fmt.Errorf("qos: check marking: received tos %#02x, want dscp %d", m.Data[0], dscp)
			}
			return m.Data[0], nil
		}
	}
	return 0, errors.New("qos: check marking: no tos control message")
}
