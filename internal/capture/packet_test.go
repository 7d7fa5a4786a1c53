package capture

import (
	"github.com/gpumesh/gpumesh/dscp"

	"encoding/binary"
	"net/netip"
	"testing"
)

var (
	src4 = netip.MustParseAddr("192.0.2.1")
	dst4 = netip.MustParseAddr("192.0.2.2")
	src6 = netip.MustParseAddr("fd00::1")
	dst6 = netip.MustParseAddr("fd00::2")
)

// ipv4 builds an IPv4 packet around l4 (options adds 4-byte words to the header).
func ipv4(tos, proto byte, options int, l4 []byte) []byte {
	ihl := 20 + 4*options
	b := make([]byte, ihl, ihl+len(l4))
	b[0], b[1], b[8], b[9] = 0x40|byte(ihl/4), tos, 64, proto
	binary.BigEndian.PutUint16(b[2:], uint16(ihl+len(l4)))
	copy(b[12:], src4.AsSlice())
	copy(b[16:], dst4.AsSlice())
	return append(b, l4...)
}

// ipv6 builds an IPv6 packet; ext are extension headers, each a next-header
// value and its bytes (whose own next-header byte is filled in here).
func ipv6(tclass, proto byte, l4 []byte, ext ...[]byte) []byte {
	b := make([]byte, 40)
	binary.BigEndian.PutUint32(b, 6<<28|uint32(tclass)<<20)
	copy(b[8:], src6.AsSlice())
	copy(b[24:], dst6.AsSlice())
	next := &b[6]
	for _, e := range ext {
		*next = e[0]
		h := append([]byte(nil), e[1:]...)
		b = append(b, h...)
		next = &b[len(b)-len(h)]
	}
	*next = proto
	b = append(b, l4...)
	binary.BigEndian.PutUint16(b[4:], uint16(len(b)-40))
	return b
}

func udp(sport, dport uint16, payload int) []byte {
	b := make([]byte, 8+payload)
	binary.BigEndian.PutUint16(b, sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint16(b[4:], uint16(8+payload))
	return b
}

func tcp(sport, dport uint16, options, payload int) []byte {
	b := make([]byte, 20+4*options+payload)
	binary.BigEndian.PutUint16(b, sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	b[12] = byte(5+options) << 4
	return b
}

func TestDecode(t *testing.T) {
	hopByHop := append([]byte{0}, make([]byte, 8)...) // next header 0, length 0 (8 bytes)
	frag := func(offset uint16) []byte {
		h := make([]byte, 9)
		h[0] = 44
		binary.BigEndian.PutUint16(h[3:], offset<<3)
		return h
	}
	tests := []struct {
		name      string
		etherType uint16
		b         []byte
		want      Packet
	}{
		{"ipv4 udp af41 ect0", EtherTypeIPv4, ipv4(0x8a, ProtoUDP, 0, udp(41641, 41642, 100)),
			Packet{EtherType: EtherTypeIPv4, TOS: 0x8a, Protocol: ProtoUDP, Src: src4, Dst: dst4, SrcPort: 41641, DstPort: 41642, Len: 128, Payload: 100}},
		{"ipv4 options tcp", EtherTypeIPv4, ipv4(0xb8, ProtoTCP, 2, tcp(443, 5000, 3, 1000)),
			Packet{EtherType: EtherTypeIPv4, TOS: 0xb8, Protocol: ProtoTCP, Src: src4, Dst: dst4, SrcPort: 443, DstPort: 5000, Len: 28 + 32 + 1000, Payload: 1000}},
		{"ipv4 icmp", EtherTypeIPv4, ipv4(0, ProtoICMP, 0, make([]byte, 8)),
			Packet{EtherType: EtherTypeIPv4, Protocol: ProtoICMP, Src: src4, Dst: dst4, Len: 28, Payload: -1}},
		{"ipv6 udp ef ce", EtherTypeIPv6, ipv6(0xbb, ProtoUDP, udp(1, 2, 5)),
			Packet{EtherType: EtherTypeIPv6, TOS: 0xbb, Protocol: ProtoUDP, Src: src6, Dst: dst6, SrcPort: 1, DstPort: 2, Len: 53, Payload: 5}},
		{"ipv6 hop-by-hop tcp", EtherTypeIPv6, ipv6(0x02, ProtoTCP, tcp(80, 81, 0, 0), hopByHop),
			Packet{EtherType: EtherTypeIPv6, TOS: 0x02, Protocol: ProtoTCP, Src: src6, Dst: dst6, SrcPort: 80, DstPort: 81, Len: 40 + 8 + 20, Payload: 0}},
		{"ipv6 first fragment", EtherTypeIPv6, ipv6(0, ProtoUDP, udp(7, 8, 0), frag(0)),
			Packet{EtherType: EtherTypeIPv6, Protocol: ProtoUDP, Src: src6, Dst: dst6, SrcPort: 7, DstPort: 8, Len: 56, Payload: 0}},
		{"ipv6 later fragment", EtherTypeIPv6, ipv6(0, ProtoUDP, udp(7, 8, 0), frag(100)),
			Packet{EtherType: EtherTypeIPv6, Protocol: ProtoUDP, Src: src6, Dst: dst6, Len: 56, Payload: -1}},
		{"ipv4 cut short in udp", EtherTypeIPv4, ipv4(0x88, ProtoUDP, 0, udp(1, 2, 0))[:24],
			Packet{EtherType: EtherTypeIPv4, TOS: 0x88, Protocol: ProtoUDP, Src: src4, Dst: dst4, Len: 28, Payload: -1}},
		{"ipv4 header cut short", EtherTypeIPv4, ipv4(0x88, ProtoUDP, 0, nil)[:19],
			Packet{EtherType: EtherTypeIPv4, Payload: -1}},
		{"ipv6 bytes labelled ipv4", EtherTypeIPv4, ipv6(0, ProtoUDP, udp(1, 2, 0)),
			Packet{EtherType: EtherTypeIPv4, Payload: -1}},
		{"arp", EtherTypeARP, make([]byte, 28), Packet{EtherType: EtherTypeARP, Payload: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Decode(tt.etherType, tt.b); got != tt.want {
				t.Errorf("Decode\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestPacketAccessors(t *testing.T) {
	p := Decode(EtherTypeIPv4, ipv4(0x8a, ProtoUDP, 0, udp(41641, 9, 3)))
	p.Dir = Out
	if p.DSCP() != dscp.AF41 || p.ECN() != 2 || !p.IPv4() || p.IPv6() {
		t.Errorf("DSCP %s ECN %d IPv4 %v IPv6 %v; want 34 (AF41), 2 (ECT(0)), IPv4", p.DSCP(), p.ECN(), p.IPv4(), p.IPv6())
	}
	if got, want := p.String(), "out udp 192.0.2.1:41641 > 192.0.2.2:9 tos 0x8a len 31 payload 3"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if got, want := (Packet{Dir: In, EtherType: EtherTypeARP}).String(), "in ethertype 0x0806"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(uint16(EtherTypeIPv4), ipv4(0x8a, ProtoUDP, 1, udp(1, 2, 3)))
	f.Add(uint16(EtherTypeIPv6), ipv6(0x8a, ProtoTCP, tcp(1, 2, 1, 3), []byte{60, 0, 0, 0, 0, 0, 0, 0, 0}))
	f.Fuzz(func(t *testing.T, etherType uint16, b []byte) {
		p := Decode(etherType, b)
		if p.Payload > p.Len {
			t.Errorf("payload %d > length %d", p.Payload, p.Len)
		}
		if p.Src.IsValid() && p.Src.Is4() != (etherType == EtherTypeIPv4) {
			t.Errorf("%v decoded from EtherType %#04x", p.Src, etherType)
		}
	})
}
