//go:build linux

package qos_test

import (
	"context"
	"net"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gpumesh/gpumesh/dscp"
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

// TestMarkUDPPortOnTheWire: UDP packets from sockets marked by a Marker
// (dscp.MarkUDPPort), sent across a veth into another namespace, are captured
// there with the configured DSCP and the sender's ECT(0) unchanged.
func TestMarkUDPPortOnTheWire(t *testing.T) {
	nstest.Require(t, "tcpdump")
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
	type result struct {
		pkts []nstest.Packet
		err  error
	}
	resc := make(chan result, 2)
	for _, fam := range []string{"ip", "ip6"} {
		wait := p.B.Capture(ctx, t, p.LinkB, fam+" and udp and src port "+strconv.Itoa(port), count)
		go func() { pkts, err := wait(); resc <- result{pkts, err} }()
	}
	var pkts []nstest.Packet
	done := 0
	// Send until both captures have their packets.
	err := nstest.Every(ctx, 20*time.Millisecond, func() bool {
		for drained := false; !drained; {
			select {
			case res := <-resc:
				if res.err != nil {
					t.Fatal(res.err)
				}
				pkts = append(pkts, res.pkts...)
				done++
			default:
				drained = true
			}
		}
		if done == 2 {
			return true
		}
		v4.WriteTo([]byte("gpu"), &net.UDPAddr{IP: p.AddrB, Port: 9})
		v6.WriteTo([]byte("gpu"), &net.UDPAddr{IP: p.Addr6B, Port: 9})
		return false
	})
	if err != nil {
		t.Fatal(err)
	}
	var fams [2]int
	for _, pkt := range pkts {
		t.Logf("captured ipv6=%v tos=%#02x dscp=%s ecn=%d sport=%d", pkt.IPv6, pkt.TOS, pkt.DSCP(), pkt.ECN(), pkt.SrcPort)
		if pkt.DSCP() != dscp.AF41 || pkt.ECN() != 2 {
			t.Errorf("packet tos %#02x: want DSCP AF41 with ECT(0) (0x8a)", pkt.TOS)
		}
		if pkt.IPv6 {
			fams[1]++
		} else {
			fams[0]++
		}
	}
	if fams[0] != count || fams[1] != count {
		t.Errorf("captured %d IPv4 and %d IPv6 packets, want %d of each", fams[0], fams[1], count)
	}
}
