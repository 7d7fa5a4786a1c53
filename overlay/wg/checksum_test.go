package wg

import (
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// packet builds an IPv4 or IPv6 packet carrying a TCP or UDP segment with
// correct checksums.
func packet(t *testing.T, v6 bool, proto tcpip.TransportProtocolNumber, payload string) []byte {
	t.Helper()
	l4len := header.TCPMinimumSize
	if proto == header.UDPProtocolNumber {
		l4len = header.UDPMinimumSize
	}
	l3len := header.IPv4MinimumSize
	src, dst := tcpip.AddrFrom4([4]byte{10, 77, 0, 2}), tcpip.AddrFrom4([4]byte{10, 77, 0, 1})
	if v6 {
		l3len = header.IPv6MinimumSize
		src = tcpip.AddrFrom16([16]byte{0xfd, 15: 2})
		dst = tcpip.AddrFrom16([16]byte{0xfd, 15: 1})
	}
	b := make([]byte, l3len+l4len+len(payload))
	copy(b[l3len+l4len:], payload)
	seg := b[l3len:]
	if v6 {
		header.IPv6(b).Encode(&header.IPv6Fields{PayloadLength: uint16(len(seg)), TransportProtocol: proto, HopLimit: 64,
			SrcAddr: src, DstAddr: dst})
	} else {
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), Protocol: uint8(proto), TTL: 64, SrcAddr: src, DstAddr: dst})
		ip.SetChecksum(^ip.CalculateChecksum())
	}
	sum := header.PseudoHeaderChecksum(proto, src, dst, uint16(len(seg)))
	if proto == header.TCPProtocolNumber {
		tcp := header.TCP(seg)
		tcp.Encode(&header.TCPFields{SrcPort: 40000, DstPort: 7000, SeqNum: 1, DataOffset: header.TCPMinimumSize,
			Flags: header.TCPFlagAck, WindowSize: 1000})
		tcp.SetChecksum(^checksum.Checksum(seg, sum))
	} else {
		udp := header.UDP(seg)
		udp.Encode(&header.UDPFields{SrcPort: 40000, DstPort: 7443, Length: uint16(len(seg))})
		udp.SetChecksum(^checksum.Checksum(seg, sum))
	}
	return b
}

func TestChecksumsValid(t *testing.T) {
	tcp, udp := header.TCPProtocolNumber, header.UDPProtocolNumber
	for _, tc := range []struct {
		name    string
		pkt     func() []byte
		wantOK  bool
		wantNet tcpip.NetworkProtocolNumber
	}{
		{"ipv4 tcp", func() []byte { return packet(t, false, tcp, "hello") }, true, header.IPv4ProtocolNumber},
		{"ipv4 udp", func() []byte { return packet(t, false, udp, "hello") }, true, header.IPv4ProtocolNumber},
		{"ipv6 tcp", func() []byte { return packet(t, true, tcp, "hello") }, true, header.IPv6ProtocolNumber},
		{"ipv6 udp", func() []byte { return packet(t, true, udp, "hello") }, true, header.IPv6ProtocolNumber},
		{"ipv4 tcp payload flipped", func() []byte { b := packet(t, false, tcp, "hello"); b[len(b)-1] ^= 1; return b }, false, 0},
		{"ipv6 udp payload flipped", func() []byte { b := packet(t, true, udp, "hello"); b[len(b)-1] ^= 1; return b }, false, 0},
		{"ipv4 header flipped", func() []byte { b := packet(t, false, tcp, "hello"); b[8] ^= 1; return b }, false, 0},
		{"ipv4 udp without checksum", func() []byte {
			b := packet(t, false, udp, "hello")
			b[26], b[27] = 0, 0
			return b
		}, true, header.IPv4ProtocolNumber},
		{"ipv4 fragment, l4 unchecked", func() []byte {
			b := packet(t, false, tcp, "hello")
			b[len(b)-1] ^= 1
			ip := header.IPv4(b)
			ip.SetFlagsFragmentOffset(header.IPv4FlagMoreFragments, 0)
			ip.SetChecksum(0)
			ip.SetChecksum(^ip.CalculateChecksum())
			return b
		}, true, header.IPv4ProtocolNumber},
		{"truncated", func() []byte { return packet(t, false, tcp, "hello")[:30] }, false, 0},
		{"empty", func() []byte { return nil }, false, 0},
		{"not ip", func() []byte { return []byte{0x20, 1, 2, 3} }, false, 0},
	} {
		proto, ok := checksumsValid(tc.pkt())
		if ok != tc.wantOK || (ok && proto != tc.wantNet) {
			t.Errorf("%s: checksumsValid = %v, %v; want %v, %v", tc.name, proto, ok, tc.wantNet, tc.wantOK)
		}
	}
}
