//go:build linux

package nstest

import (
	"encoding/binary"
	"testing"

	"github.com/gpumesh/gpumesh/dscp"
)

// pcapOf builds a little-endian pcap file of Ethernet frames.
func pcapOf(frames ...[]byte) []byte {
	b := make([]byte, 24)
	binary.LittleEndian.PutUint32(b, 0xa1b2c3d4)
	binary.LittleEndian.PutUint32(b[20:], 1)
	for _, f := range frames {
		rec := make([]byte, 16)
		binary.LittleEndian.PutUint32(rec[8:], uint32(len(f)))
		binary.LittleEndian.PutUint32(rec[12:], uint32(len(f)))
		b = append(append(b, rec...), f...)
	}
	return b
}

func udp4Frame(tos byte, sport uint16) []byte {
	f := make([]byte, 14+20+8)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	f[14], f[15], f[14+9] = 0x45, tos, 17
	binary.BigEndian.PutUint16(f[34:], sport)
	return f
}

func TestParsePcap(t *testing.T) {
	pkts, err := ParsePcap(pcapOf(udp4Frame(0x8a, 41641)))
	if err != nil || len(pkts) != 1 {
		t.Fatalf("ParsePcap = %v, %v", pkts, err)
	}
	if p := pkts[0]; p.DSCP() != dscp.AF41 || p.ECN() != 2 || p.SrcPort != 41641 || p.IPv6 {
		t.Errorf("packet %+v", p)
	}
}

func FuzzParsePcap(f *testing.F) {
	f.Add(pcapOf(udp4Frame(0x88, 1)))
	f.Add(pcapOf([]byte{1, 2, 3}))
	f.Fuzz(func(t *testing.T, b []byte) {
		ParsePcap(b) // must not panic
	})
}
