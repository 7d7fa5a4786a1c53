package dscp

import (
	"errors"
	"net"
	"syscall"
	"testing"

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

func listen(t *testing.T, network string, addr *net.UDPAddr) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestMarkUDPPort opens sockets on one port (IPv4, IPv6) and one on
// another, marks the port, and checks both the socket option and the TOS
// byte received on loopback, with the sender's ECT(0) kept.
func TestMarkUDPPort(t *testing.T) {
	v4 := listen(t, "udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	port := v4.LocalAddr().(*net.UDPAddr).Port
	want := 1
	v6, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback, Port: port})
	if err == nil {
		defer v6.Close()
		want++
	} else {
		t.Logf("no IPv6 socket on port %d: %v", port, err)
	}
	other := listen(t, "udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})

	setTOS(t, v4, 0x02) // ECT(0), as an ECN-capable sender sets it
	n, err := MarkUDPPort(uint16(port), AF41, nil)
	if err != nil || n != want {
		t.Fatalf("MarkUDPPort = %d, %v; want %d sockets", n, err, want)
	}
	if tos, _ := TOSOf(v4); tos != 0x8a {
		t.Errorf("v4 socket TOS %#x, want 0x8a (AF41 + ECT(0))", tos)
	}
	if tos, _ := TOSOf(other); tos != 0 {
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
		if tos, _ := TOSOf(v6); tos != 0x88 {
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

	// CS0 is a code point too: it clears the DSCP, keeping ECT(0).
	if n, err := MarkUDPPort(uint16(port), CS0, nil); err != nil || n != want {
		t.Fatalf("MarkUDPPort CS0 = %d, %v", n, err)
	}
	if tos, _ := TOSOf(v4); tos != 0x02 {
		t.Errorf("after CS0, v4 socket TOS %#x, want 0x02 (CS0 + ECT(0))", tos)
	}
	if _, err := MarkUDPPort(uint16(port), None, nil); !errors.Is(err, ErrNone) {
		t.Errorf("MarkUDPPort None: %v, want ErrNone", err)
	}
}

// TestMarkUDPPortSkips: sockets in a Sockets snapshot are left alone, so a
// caller can mark only the sockets a Bind opened after the snapshot, with
// their ECN bits kept (the copy in overlay/wg used to clear them).
func TestMarkUDPPortSkips(t *testing.T) {
	old := listen(t, "udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	port := old.LocalAddr().(*net.UDPAddr).Port
	before, err := Sockets()
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback, Port: port})
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	defer fresh.Close()
	setTOS(t, fresh, 0x01) // ECT(1)
	if n, err := MarkUDPPort(uint16(port), EF, before); err != nil || n != 1 {
		t.Fatalf("MarkUDPPort = %d, %v; want the one new socket", n, err)
	}
	if tos, _ := TOSOf(old); tos != 0 {
		t.Errorf("socket in the snapshot got TOS %#x", tos)
	}
	if tos, _ := TOSOf(fresh); tos != 0xb9 {
		t.Errorf("new socket TOS %#x, want 0xb9 (EF + ECT(1))", tos)
	}
}

// TestMarkDualStack: a dual-stack socket's IPv4 traffic is marked too.
func TestMarkDualStack(t *testing.T) {
	ds := listen(t, "udp", &net.UDPAddr{})
	if err := Mark(ds, EF); err != nil {
		t.Fatal(err)
	}
	tap := listenTap(t, "udp4", net.IPv4(127, 0, 0, 1))
	if _, err := ds.WriteTo([]byte("x"), tap.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	if got, want := recvTOS(t, tap), EF.TOS(0); got != want {
		t.Errorf("received TOS %#x, want %#x (EF)", got, want)
	}
	if err := Mark(ds, Code(65)); !errors.Is(err, ErrBad) {
		t.Errorf("Mark with an out-of-range code: %v, want ErrBad", err)
	}
	if err := Mark(ds, None); !errors.Is(err, ErrNone) {
		t.Errorf("Mark with None: %v, want ErrNone", err)
	}
}

func TestCheck(t *testing.T) {
	for _, c := range []Code{EF, CS0} {
		tos, err := Check(c)
		if err != nil || tos != c.TOS(0) {
			t.Errorf("Check(%v) = %#x, %v; want %#x", c, tos, err, c.TOS(0))
		}
	}
}
