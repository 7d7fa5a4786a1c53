//go:build linux

package qos_test

import (
	"context"
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gpumesh/gpumesh/dscp"
	"github.com/gpumesh/gpumesh/internal/capture"
	"github.com/gpumesh/gpumesh/qos"
	"github.com/gpumesh/gpumesh/qos/internal/nstest"
)

// setECT0 marks a socket's packets ECN-capable (ECT(0)), as an ECN sender
// does, before qos touches the DSCP.
func setECT0(t *testing.T, c syscall.Conn, v6 bool) {
	t.Helper()
	rc, _ := c.SyscallConn()
	var err error
	rc.Control(func(fd uintptr) {
		if v6 {
			err = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_TCLASS, 0x02)
		} else {
			err = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TOS, 0x02)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestMarkUDPPortOnTheWire: UDP packets from sockets marked with
// MarkUDPPort, sent across a veth into another namespace, are captured
// there with the configured DSCP and the sender's ECT(0) unchanged.
func TestMarkUDPPortOnTheWire(t *testing.T) {
	p := nstest.NewPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	v4 := p.A.ListenUDP(t, "udp4", &net.UDPAddr{IP: p.AddrA})
	port := v4.LocalAddr().(*net.UDPAddr).Port
	v6 := p.A.ListenUDP(t, "udp6", &net.UDPAddr{IP: p.Addr6A, Port: port})
	setECT0(t, v4, false)
	setECT0(t, v6, true)
	m := qos.NewMarker(qos.MarkerConfig{Port: uint16(port), DSCP: dscp.AF41})
	defer m.Close()
	if n, err := m.Mark(); err != nil || n != 2 {
		t.Fatalf("Mark = %d, %v; want 2 sockets", n, err)
	}

	// One capture per family: IPv6 neighbour discovery on a fresh veth
	// can take a second, long after the IPv4 packets arrived.
	const count = 3
	fromPort := func(v6 bool) func(capture.Packet) bool {
		return func(pkt capture.Packet) bool {
			return pkt.IPv6() == v6 && pkt.Protocol == capture.ProtoUDP && pkt.SrcPort == uint16(port)
		}
	}
	caps := []*capture.Capture{p.B.Capture(t, p.LinkB, fromPort(false)), p.B.Capture(t, p.LinkB, fromPort(true))}
	// Send until both captures have their packets.
	err := nstest.Every(ctx, 20*time.Millisecond, func() bool {
		if caps[0].Len() >= count && caps[1].Len() >= count {
			return true
		}
		v4.WriteTo([]byte("gpu"), &net.UDPAddr{IP: p.AddrB, Port: 9})
		v6.WriteTo([]byte("gpu"), &net.UDPAddr{IP: p.Addr6B, Port: 9})
		return false
	})
	if err != nil {
		t.Fatalf("captured %d IPv4 and %d IPv6 packets, want %d of each: %v", caps[0].Len(), caps[1].Len(), count, err)
	}
	for _, c := range caps {
		pkts, err := c.Wait(ctx, count)
		if err != nil {
			t.Fatal(err)
		}
		for _, pkt := range pkts {
			t.Logf("captured %v dscp=%s ecn=%d", pkt, pkt.DSCP(), pkt.ECN())
			if pkt.DSCP() != dscp.AF41 || pkt.ECN() != 2 || pkt.Dir != capture.In {
				t.Errorf("packet %v: want DSCP AF41 with ECT(0) (tos 0x8a), arriving", pkt)
			}
		}
	}
}
