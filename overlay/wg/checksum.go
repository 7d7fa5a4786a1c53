package wg

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
)

// checksumsValid checks, in an inbound IP packet, what gVisor would check
// itself without the link's RX checksum offload: the IPv4 header checksum
// and the TCP and UDP checksums. It returns the packet's network protocol
// and false for a packet to drop. ICMP checksums gVisor checks anyway;
// the transport checksums of IPv4 fragments and of IPv6 packets with
// extension headers are not checked (WireGuard has already authenticated
// every byte: a bad checksum there could only come from the sending peer,
// and only break its own connection).
func checksumsValid(pkt []byte) (tcpip.NetworkProtocolNumber, bool) {
	if len(pkt) == 0 {
		return 0, false
	}
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < 20 {
			return 0, false
		}
		ihl := int(pkt[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(pkt[2:4]))
		if ihl < 20 || total < ihl || total > len(pkt) || checksum.Checksum(pkt[:ihl], 0) != 0xffff {
			return 0, false
		}
		if frag := binary.BigEndian.Uint16(pkt[6:8]); frag&0x3fff != 0 { // MF or an offset
			return ipv4.ProtocolNumber, true
		}
		return ipv4.ProtocolNumber, l4Valid(pkt[9], pkt[12:16], pkt[16:20], pkt[ihl:total])
	case 6:
		if len(pkt) < 40 {
			return 0, false
		}
		end := 40 + int(binary.BigEndian.Uint16(pkt[4:6]))
		if end > len(pkt) {
			return 0, false
		}
		return ipv6.ProtocolNumber, l4Valid(pkt[6], pkt[8:24], pkt[24:40], pkt[40:end])
	}
	return 0, false
}

// l4Valid checks a TCP or UDP segment's checksum; other protocols pass.
func l4Valid(proto byte, src, dst, seg []byte) bool {
	const tcpProto, udpProto = 6, 17
	switch proto {
	case tcpProto:
		if len(seg) < 20 {
			return false
		}
	case udpProto:
		if len(seg) < 8 {
			return false
		}
		if len(src) == 4 && seg[6] == 0 && seg[7] == 0 {
			return true // IPv4 UDP without a checksum
		}
	default:
		return true
	}
	sum := checksum.Checksum(src, 0)
	sum = checksum.Checksum(dst, sum)
	sum = checksum.Combine(sum, uint16(proto))
	sum = checksum.Combine(sum, uint16(len(seg)))
	return checksum.Checksum(seg, sum) == 0xffff
}
