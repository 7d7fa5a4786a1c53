package qos

import (
	"context"
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// setTOS sets the raw TOS/traffic-class byte (here: ECN bits only).
func setTOS(t *testing.T, c syscall.Conn, tos int) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	rc.Control(func(fd uintptr) {
		level, opt, err := tosOption(int(fd))
		if err != nil {
			serr = err
			return
		}
		serr = unix.SetsockoptInt(int(fd), level, opt, tos)
	})
	if serr != nil {
		t.Fatal(serr)
	}
}

// recvTOS reads one datagram on tap (with IP_RECVTOS / IPV6_RECVTCLASS on)
// and returns the TOS byte it arrived with.
func recvTOS(t *testing.T, tap *net.UDPConn) byte {
	t.Helper()
	buf, oob := make([]byte, 1500), make([]byte, 128)
	_, oobn, _, _, err := tap.ReadMsgUDP(buf, oob)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_TOS:
			return m.Data[0]
		case m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_TCLASS:
			return m.Data[0] // an int in host order; the class is its low byte
		}
	}
	t.Fatal("no TOS control message")
	return 0
}

func listenTap(t *testing.T, network string, ip net.IP) *net.UDPConn {
	t.Helper()
	tap, err := net.ListenUDP(network, &net.UDPAddr{IP: ip})
	if err != nil {
		t.Skipf("no %s loopback: %v", network, err)
	}
	t.Cleanup(func() { tap.Close() })
	rc, _ := tap.SyscallConn()
	rc.Control(func(fd uintptr) {
		unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVTOS, 1)
		if ip.To4() == nil {
			unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVTCLASS, 1)
		}
	})
	return tap
}

// TestMarkUDPPort opens sockets on one port (IPv4, IPv6, dual-stack on
// another port), marks the port, and checks both the socket option and the
// TOS byte received on loopback, with the sender's ECT(0) kept.
func TestMarkUDPPort(t *testing.T) {
	v4, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer v4.Close()
	port := v4.LocalAddr().(*net.UDPAddr).Port
	want := 1
	v6, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback, Port: port})
	if err == nil {
		defer v6.Close()
		want++
	} else {
		t.Logf("no IPv6 socket on port %d: %v", port, err)
	}
	other, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()

	setTOS(t, v4, 0x02) // ECT(0), as an ECN-capable sender sets it
	n, err := MarkUDPPort(uint16(port), DSCPAF41)
	if err != nil || n != want {
		t.Fatalf("MarkUDPPort = %d, %v; want %d sockets", n, err, want)
	}
	if tos, _ := ConnTOS(v4); tos != 0x8a {
		t.Errorf("v4 socket TOS %#x, want 0x8a (AF41 + ECT(0))", tos)
	}
	if tos, _ := ConnTOS(other); tos != 0 {
		t.Errorf("socket on another port got TOS %#x", tos)
	}

	tap := listenTap(t, "udp4", net.IPv4(127, 0, 0, 1))
	if _, err := v4.WriteTo([]byte("x"), tap.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	if got := recvTOS(t, tap); got != 0x8a {
		t.Errorf("received TOS %#x, want 0x8a", got)
	}

	if v6 != nil {
		if tos, _ := ConnTOS(v6); tos != 0x88 {
			t.Errorf("v6 socket traffic class %#x, want 0x88", tos)
		}
		tap6 := listenTap(t, "udp6", net.IPv6loopback)
		if _, err := v6.WriteTo([]byte("x"), tap6.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		if got := recvTOS(t, tap6); got != 0x88 {
			t.Errorf("received traffic class %#x, want 0x88", got)
		}
	}
}

// TestMarkConnDualStack: a dual-stack socket's IPv4 traffic is marked too.
func TestMarkConnDualStack(t *testing.T) {
	ds, err := net.ListenUDP("udp", &net.UDPAddr{})
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	if err := MarkConn(ds, DSCPEF); err != nil {
		t.Fatal(err)
	}
	tap := listenTap(t, "udp4", net.IPv4(127, 0, 0, 1))
	if _, err := ds.WriteTo([]byte("x"), tap.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	if got := recvTOS(t, tap); got != DSCPEF<<2 {
		t.Errorf("received TOS %#x, want %#x (EF)", got, DSCPEF<<2)
	}
	if err := MarkConn(ds, 64); err == nil {
		t.Error("MarkConn accepted DSCP 64")
	}
}

// TestMarkerRemarksAfterRebind: a socket reopened on the port is marked by
// the next pass, on demand and periodically.
func TestMarkerRemarksAfterRebind(t *testing.T) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := c.LocalAddr().(*net.UDPAddr)
	var lines []string
	m := NewMarker(MarkerConfig{Port: uint16(addr.Port), Interval: time.Millisecond, Logf: func(f string, a ...any) { lines = append(lines, f) }})
	passes := make(chan int, 1)
	m.applied = func(n int) {
		select {
		case passes <- n:
		default:
		}
	}
	if n, err := m.Mark(); n != 1 || err != nil {
		t.Fatalf("Mark = %d, %v", n, err)
	}
	c.Close()
	c, err = net.ListenUDP("udp4", addr) // the "rebind"
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if tos, _ := ConnTOS(c); tos != 0 {
		t.Fatalf("fresh socket already has TOS %#x", tos)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err == nil {
		t.Error("second Start succeeded")
	}
	for n := 0; n != 1; n = <-passes {
	}
	if tos, _ := ConnTOS(c); tos != 0x88 {
		t.Errorf("rebound socket TOS %#x, want 0x88", tos)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != net.ErrClosed {
		t.Errorf("second Close = %v, want net.ErrClosed", err)
	}
	if st := m.Status(); st.Sockets != 1 || st.DSCP != DSCPAF41 || st.Err != nil {
		t.Errorf("status %+v", st)
	}
	if len(lines) == 0 {
		t.Error("nothing logged")
	}
}

func TestCheckMarking(t *testing.T) {
	tos, err := CheckMarking(DSCPEF)
	if err != nil || tos != DSCPEF<<2 {
		t.Fatalf("CheckMarking = %#x, %v", tos, err)
	}
}
