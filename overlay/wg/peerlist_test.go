package wg

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/gpumesh/gpumesh/overlay"
)

func TestPeers(t *testing.T) {
	self := newMember(t, "laptop", "10.77.0.1")
	a := newMember(t, "gpu-a", "10.77.0.2")
	b := newMember(t, "gpu-b", "10.77.0.3")
	text := conf(self, 0, peerOf{m: a, endpoint: "127.0.0.1:51999"}, peerOf{m: b})
	n, err := New(Config{File: mustParse(t, "laptop.conf", text)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Peers(t.Context()); !errors.Is(err, ErrNotUp) {
		t.Errorf("Peers before Up = %v, want ErrNotUp", err)
	}
	if err := n.Up(t.Context()); err != nil {
		t.Fatal(err)
	}
	peers, err := n.Peers(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := []overlay.Peer{
		{Name: "gpu-a", Addrs: []netip.Addr{netip.MustParseAddr("10.77.0.2")}, Online: true, Path: overlay.PathDirect},
		{Name: "gpu-b", Addrs: []netip.Addr{netip.MustParseAddr("10.77.0.3")}, Online: true, Path: overlay.PathUnknown},
	}
	if !slices.EqualFunc(peers, want, func(x, y overlay.Peer) bool {
		return x.Name == y.Name && slices.Equal(x.Addrs, y.Addrs) && x.Online == y.Online && x.Path == y.Path && len(x.Tags) == 0
	}) {
		t.Errorf("Peers = %+v\nwant %+v", peers, want)
	}
	n.Close()
	if _, err := n.Peers(t.Context()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Peers after Close = %v, want net.ErrClosed", err)
	}
}
