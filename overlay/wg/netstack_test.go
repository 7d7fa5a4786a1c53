package wg

import (
	"bytes"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// TestCopyPacket checks that copyPacket copies exactly the packet's bytes:
// the headers pushed into its headroom, then a payload of several views,
// and none of the headroom left unused.
func TestCopyPacket(t *testing.T) {
	payload := buffer.MakeWithData(bytes.Repeat([]byte{0xaa}, 3000))
	payload.Append(buffer.NewViewWithData(bytes.Repeat([]byte{0xbb}, 700)))
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{ReserveHeaderBytes: 64, Payload: payload})
	defer pkt.DecRef()
	copy(pkt.TransportHeader().Push(20), bytes.Repeat([]byte{0x02}, 20))
	copy(pkt.NetworkHeader().Push(40), bytes.Repeat([]byte{0x01}, 40))
	want := pkt.ToView().AsSlice()

	dst := make([]byte, 8192)
	n, err := copyPacket(dst, pkt)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dst[:n], want) {
		t.Fatalf("copied %d bytes, want the packet's %d (equal: %v)", n, len(want), bytes.Equal(dst[:min(n, len(want))], want[:min(n, len(want))]))
	}
	if a := testing.AllocsPerRun(100, func() { copyPacket(dst, pkt) }); a != 0 {
		t.Errorf("copyPacket allocates %v times per packet, want 0", a)
	}
	if _, err := copyPacket(make([]byte, len(want)-1), pkt); err == nil {
		t.Fatalf("a %d-byte packet copied into %d bytes without an error", len(want), len(want)-1)
	}
}
