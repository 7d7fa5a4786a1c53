package qos

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gpumesh/gpumesh/dscp"
	"github.com/gpumesh/gpumesh/internal/capture"
	"github.com/gpumesh/gpumesh/qos/internal/nstest"
)

// tcpPair returns the dialling and accepted ends of a TCP connection to a
// listener on laddr (network "tcp", "tcp4" or "tcp6").
func tcpPair(t *testing.T, network string, laddr, daddr net.IP) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP(network, &net.TCPAddr{IP: laddr})
	if err != nil {
		t.Skipf("no %s listener on %v: %v", network, laddr, err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	client, err = net.DialTCP("tcp", nil, &net.TCPAddr{IP: daddr, Port: port})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err = ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return client, server
}

// ipTOS reads IP_TOS, which a dual-stack socket uses for IPv4 traffic.
func ipTOS(t *testing.T, c *net.TCPConn) byte {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var tos int
	var gerr error
	rc.Control(func(fd uintptr) { tos, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TOS) })
	if gerr != nil {
		t.Fatal(gerr)
	}
	return byte(tos)
}

// TestSetConnDSCPKernel: on kernel TCP sockets of each family, including
// an IPv6 socket carrying IPv4-mapped traffic, SetConnDSCP sets the option
// the kernel stamps on the packets, through a NetConn wrapper too.
func TestSetConnDSCPKernel(t *testing.T) {
	tests := []struct {
		name         string
		network      string
		laddr, daddr net.IP
		mapped       bool // the accepted socket is AF_INET6 with IPv4 traffic
	}{
		{"ipv4", "tcp4", net.IPv4(127, 0, 0, 1), net.IPv4(127, 0, 0, 1), false},
		{"ipv6", "tcp6", net.IPv6loopback, net.IPv6loopback, false},
		{"ipv4-mapped", "tcp", net.IPv6unspecified, net.IPv4(127, 0, 0, 1), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, server := tcpPair(t, tt.network, tt.laddr, tt.daddr)
			if tos, err := dscp.TOSOf(server); err != nil || tos != 0 {
				t.Fatalf("fresh socket tos %#02x, %v", tos, err)
			}
			if err := SetConnDSCP(wrapped{server}, dscp.EF); err != nil {
				t.Fatal(err)
			}
			if tos, err := dscp.TOSOf(server); err != nil || tos != dscp.EF.TOS(0) {
				t.Errorf("tos %#02x, %v; want %#02x", tos, err, dscp.EF.TOS(0))
			}
			if tt.mapped {
				if tos := ipTOS(t, server); tos != dscp.EF.TOS(0) {
					t.Errorf("IP_TOS of the dual-stack socket %#02x, want %#02x", tos, dscp.EF.TOS(0))
				}
			}
			if tos, _ := dscp.TOSOf(client); tos != 0 {
				t.Errorf("the other end got tos %#02x", tos)
			}
		})
	}
}

// TestSetConnDSCPKernelErrors: a Unix socket has no DSCP (ErrNoInnerDSCP);
// a closed TCP connection is an error, but not that one.
func TestSetConnDSCPKernelErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	uc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	err = SetConnDSCP(uc, dscp.EF)
	if !errors.Is(err, ErrNoInnerDSCP) || !strings.Contains(err.Error(), "*net.UnixConn") {
		t.Errorf("unix socket: err = %v, want ErrNoInnerDSCP naming *net.UnixConn", err)
	}

	_, server := tcpPair(t, "tcp4", net.IPv4(127, 0, 0, 1), net.IPv4(127, 0, 0, 1))
	server.Close()
	err = SetConnDSCP(server, dscp.EF)
	if err == nil || errors.Is(err, ErrNoInnerDSCP) {
		t.Errorf("closed conn: err = %v, want an error other than ErrNoInnerDSCP", err)
	}
}

// TestSetConnDSCPOnTheWire: a kernel TCP connection across a veth between
// two namespaces negotiates ECN; the accepting end's data segments,
// captured at the dialler, carry DSCP 0 before SetConnDSCP and EF after,
// with the kernel's ECT(0) kept throughout.
func TestSetConnDSCPOnTheWire(t *testing.T) {
	p := nstest.NewPair(t)
	// The dialler asks for ECN; the acceptor's default (2) grants it.
	if err := p.A.Do(func() error { return os.WriteFile("/proc/sys/net/ipv4/tcp_ecn", []byte("1"), 0) }); err != nil {
		t.Fatal(err)
	}
	for _, fam := range []struct {
		name, network string
		addr          net.IP
	}{
		{"ipv4", "tcp4", p.AddrB},
		{"ipv6", "tcp6", p.Addr6B},
	} {
		t.Run(fam.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var ln *net.TCPListener
			if err := p.B.Do(func() (err error) {
				ln, err = net.ListenTCP(fam.network, &net.TCPAddr{IP: fam.addr})
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			port := ln.Addr().(*net.TCPAddr).Port
			var client net.Conn
			if err := p.A.Do(func() (err error) {
				var d net.Dialer
				client, err = d.DialContext(ctx, fam.network, ln.Addr().String())
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			server, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer server.Close()

			// dataSegments returns the first count data segments the
			// server sends, writing until a capture has them. Each chunk
			// is read back before the next is written, so none is in
			// flight when it returns.
			dataSegments := func(count int) []capture.Packet {
				c := p.A.Capture(t, p.LinkA, func(pkt capture.Packet) bool {
					return pkt.IPv6() == (fam.network == "tcp6") && pkt.Protocol == capture.ProtoTCP &&
						pkt.SrcPort == uint16(port) && pkt.Payload > 0
				})
				defer c.Close()
				chunk := make([]byte, 2000)
				err := nstest.Every(ctx, 10*time.Millisecond, func() bool {
					if c.Len() >= count {
						return true
					}
					if _, err := server.Write(chunk); err != nil {
						t.Fatal(err)
					}
					if _, err := io.ReadFull(client, chunk); err != nil {
						t.Fatal(err)
					}
					return false
				})
				if err != nil {
					t.Fatal(err)
				}
				pkts, err := c.Wait(ctx, count)
				if err != nil {
					t.Fatal(err)
				}
				return pkts
			}

			for _, pkt := range dataSegments(3) {
				t.Logf("before: %v", pkt)
				if pkt.DSCP() != dscp.CS0 || pkt.ECN() != 2 {
					t.Fatalf("unmarked segment tos %#02x, want 0x02 (ECT(0))", pkt.TOS)
				}
			}
			if err := SetConnDSCP(server, dscp.EF); err != nil {
				t.Fatal(err)
			}
			for _, pkt := range dataSegments(3) {
				t.Logf("after: %v dscp=%s ecn=%d", pkt, pkt.DSCP(), pkt.ECN())
				if pkt.DSCP() != dscp.EF || pkt.ECN() != 2 {
					t.Errorf("marked segment tos %#02x, want %#02x (EF + ECT(0))", pkt.TOS, dscp.EF.TOS(2))
				}
			}
		})
	}
}
