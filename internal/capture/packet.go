// Package capture records the packets that cross one network interface,
// for tests that check what is on the wire: DSCP and ECN bits, addresses,
// ports, counts and direction. An AF_PACKET socket bound to the interface,
// inside the network namespace the interface lives in, sees every frame
// leaving and entering it; the IPv4/IPv6 and UDP/TCP headers are decoded
// here, in Go, so no tcpdump or libpcap is needed. Capturing needs
// CAP_NET_RAW (root) and Linux; Decode runs anywhere.
//
// It imports only the standard library and golang.org/x/sys. Only tests
// use it.
package capture

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"

	"github.com/gpumesh/gpumesh/dscp"
)

// EtherTypes of the frames tests meet.
const (
	EtherTypeIPv4 = 0x0800
	EtherTypeARP  = 0x0806
	EtherTypeIPv6 = 0x86dd
)

// IP protocol numbers (IPv4 protocol, IPv6 next header).
const (
	ProtoICMP   = 1
	ProtoTCP    = 6
	ProtoUDP    = 17
	ProtoICMPv6 = 58
)

// Direction says whether the interface sent or received a packet.
type Direction uint8

const (
	// In is a packet the interface received.
	In Direction = iota + 1
	// Out is a packet the interface sent.
	Out
)

func (d Direction) String() string {
	switch d {
	case In:
		return "in"
	case Out:
		return "out"
	}
	return "?"
}

// Packet is one captured frame, decoded as far as its headers go. A frame
// that is not IP, or whose IP header is cut short, has only Dir and
// EtherType set (and Src/Dst invalid).
type Packet struct {
	Dir       Direction
	EtherType uint16     // EtherTypeIPv4, EtherTypeIPv6, EtherTypeARP, …
	TOS       byte       // IPv4 TOS or IPv6 traffic class: DSCP<<2 | ECN
	Protocol  byte       // IPv4 protocol or IPv6 next header after extension headers
	Src, Dst  netip.Addr // invalid unless the IP header was decoded
	// SrcPort and DstPort are the UDP or TCP ports; 0 for other protocols
	// and fragments after the first.
	SrcPort, DstPort uint16
	// Len is the IP packet's length from its header (IPv4 total length,
	// IPv6 40 + payload length); 0 when not decoded.
	Len int
	// Payload is the number of bytes after the UDP or TCP header, from
	// the IP length; -1 when unknown (other protocols, short headers).
	Payload int
}

// IPv4 reports whether p is an IPv4 packet with a decoded header.
func (p Packet) IPv4() bool { return p.Src.Is4() }

// IPv6 reports whether p is an IPv6 packet with a decoded header.
func (p Packet) IPv6() bool { return p.Src.Is6() }

// DSCP returns the packet's code point (the TOS byte's upper six bits;
// never dscp.None: an unmarked packet carries CS0).
func (p Packet) DSCP() dscp.Code {
	c, _ := dscp.Of(p.TOS >> 2) // six bits: always in range
	return c
}

// ECN returns the packet's two ECN bits (0 Not-ECT, 1 ECT(1), 2 ECT(0), 3 CE).
func (p Packet) ECN() uint8 { return p.TOS & 3 }

// String formats p on one line, like "in udp 192.0.2.1:41641 > 192.0.2.2:41642 tos 0x88 len 148".
func (p Packet) String() string {
	var b strings.Builder
	b.WriteString(p.Dir.String())
	if !p.Src.IsValid() {
		fmt.Fprintf(&b, " ethertype %#04x", p.EtherType)
		return b.String()
	}
	switch p.Protocol {
	case ProtoUDP, ProtoTCP:
		name := "udp"
		if p.Protocol == ProtoTCP {
			name = "tcp"
		}
		fmt.Fprintf(&b, " %s %s > %s", name,
			netip.AddrPortFrom(p.Src, p.SrcPort), netip.AddrPortFrom(p.Dst, p.DstPort))
	default:
		fmt.Fprintf(&b, " proto %d %s > %s", p.Protocol, p.Src, p.Dst)
	}
	fmt.Fprintf(&b, " tos %#02x len %d", p.TOS, p.Len)
	if p.Payload >= 0 {
		fmt.Fprintf(&b, " payload %d", p.Payload)
	}
	return b.String()
}

// Decode decodes a network-layer packet (the frame without its link
// header) of the given EtherType, as far as its bytes go. Dir is left
// zero. It never fails: what it cannot decode it leaves unset.
func Decode(etherType uint16, b []byte) Packet {
	p := Packet{EtherType: etherType, Payload: -1}
	be := binary.BigEndian
	var l4 []byte
	var l4len int // the L4 segment's length according to the IP header
	switch etherType {
	case EtherTypeIPv4:
		if len(b) < 20 || b[0]>>4 != 4 {
			return p
		}
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 || ihl > len(b) {
			return p
		}
		p.TOS, p.Protocol, p.Len = b[1], b[9], int(be.Uint16(b[2:]))
		p.Src, p.Dst = netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20]))
		if be.Uint16(b[6:])&0x1fff != 0 { // a later fragment: no L4 header
			return p
		}
		l4, l4len = b[ihl:], p.Len-ihl
	case EtherTypeIPv6:
		if len(b) < 40 || b[0]>>4 != 6 {
			return p
		}
		p.TOS = byte(be.Uint16(b) >> 4)
		p.Len = 40 + int(be.Uint16(b[4:]))
		p.Src, p.Dst = netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40]))
		next, off := b[6], 40
	ext:
		for {
			switch next {
			case 0, 43, 60: // hop-by-hop, routing, destination options
				if off+2 > len(b) {
					break ext
				}
				next, off = b[off], off+(int(b[off+1])+1)*8
			case 44: // fragment
				if off+8 > len(b) {
					break ext
				}
				if be.Uint16(b[off+2:])&0xfff8 != 0 { // a later fragment
					p.Protocol = b[off]
					return p
				}
				next, off = b[off], off+8
			default:
				break ext
			}
		}
		p.Protocol = next
		if off > len(b) {
			return p
		}
		l4, l4len = b[off:], p.Len-off
	default:
		return p
	}
	switch p.Protocol {
	case ProtoUDP:
		if len(l4) >= 8 {
			p.SrcPort, p.DstPort = be.Uint16(l4), be.Uint16(l4[2:])
			p.Payload = payload(l4len, 8)
		}
	case ProtoTCP:
		if len(l4) >= 20 {
			p.SrcPort, p.DstPort = be.Uint16(l4), be.Uint16(l4[2:])
			if off := int(l4[12]>>4) * 4; off >= 20 {
				p.Payload = payload(l4len, off)
			}
		}
	}
	return p
}

// payload is what an L4 segment of segLen bytes carries after a header of
// hdrLen, or -1 when the lengths disagree.
func payload(segLen, hdrLen int) int {
	if segLen < hdrLen {
		return -1
	}
	return segLen - hdrLen
}
