//go:build linux

package wg

import (
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gpumesh/gpumesh/dscp"
)

// TestOuterDSCP checks, without root, that the node's outer UDP packets
// carry Config.DSCP: a plain UDP socket posing as the peer's endpoint reads
// the TOS byte of the handshake initiation the node sends it.
func TestOuterDSCP(t *testing.T) {
	tests := []struct {
		name    string
		network string
		ip      string
		code    dscp.Code
	}{
		{"ipv4 AF41", "udp4", "127.0.0.1", dscp.AF41},
		{"ipv4 EF", "udp4", "127.0.0.1", dscp.EF},
		{"ipv6 CS1", "udp6", "::1", dscp.CS1},
		{"ipv4 CS0", "udp4", "127.0.0.1", dscp.CS0},
		{"ipv4 unmarked", "udp4", "127.0.0.1", dscp.None},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tap, err := net.ListenUDP(tt.network, &net.UDPAddr{IP: net.ParseIP(tt.ip)})
			if err != nil {
				t.Skipf("no %s loopback: %v", tt.network, err)
			}
			defer tap.Close()
			level, recv, typ := unix.IPPROTO_IP, unix.IP_RECVTOS, unix.IP_TOS
			if tt.network == "udp6" {
				level, recv, typ = unix.IPPROTO_IPV6, unix.IPV6_RECVTCLASS, unix.IPV6_TCLASS
			}
			rc, err := tap.SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var serr error
			if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), level, recv, 1) }); err != nil || serr != nil {
				t.Fatalf("IP_RECVTOS: %v %v", err, serr)
			}

			gpu := newMember(t, "gpu-host", "10.77.0.1")
			laptop := newMember(t, "laptop", "10.77.0.2")
			// A persistent keepalive makes the node start a handshake as
			// soon as it is up.
			startNode(t, Config{DSCP: tt.code, File: mustParse(t, "laptop.conf",
				conf(laptop, 0, peerOf{m: gpu, endpoint: tap.LocalAddr().String(), keepalive: 1}))})

			tap.SetReadDeadline(time.Now().Add(20 * time.Second))
			buf, oob := make([]byte, 2048), make([]byte, 128)
			n, oobn, _, _, err := tap.ReadMsgUDP(buf, oob)
			if err != nil {
				t.Fatalf("no handshake from the node: %v", err)
			}
			if n != 148 || buf[0] != 1 {
				t.Fatalf("got %d bytes type %d, want a 148-byte handshake initiation", n, buf[0])
			}
			msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range msgs {
				if m.Header.Level == int32(level) && m.Header.Type == int32(typ) {
					if got := m.Data[0] >> 2; got != tt.code.Value() {
						t.Errorf("outer DSCP = %d, want %d (%v)", got, tt.code.Value(), tt.code)
					}
					return
				}
			}
			t.Fatal("no TOS control message")
		})
	}
}
