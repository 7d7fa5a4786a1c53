package node

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/policy"
	"github.com/gpumesh/gpumesh/qos/tc"
)

// pathsOverlay is an overlay whose peers are a fixed table.
type pathsOverlay struct {
	overlay.Overlay // nil: only WhoIs and PeerPaths are called
	peers           map[netip.Addr]string
	paths           []overlay.PeerPath
}

func (o *pathsOverlay) WhoIs(_ context.Context, addr string) (overlay.Identity, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return overlay.Identity{}, err
	}
	name, ok := o.peers[ap.Addr()]
	if !ok {
		return overlay.Identity{}, &net.AddrError{Err: "unknown", Addr: addr}
	}
	return overlay.Identity{Node: name}, nil
}

func (o *pathsOverlay) PeerPaths(context.Context) ([]overlay.PeerPath, error) { return o.paths, nil }

// TestPeerRoutes: each directly reached peer's endpoint is routed to its
// rule's class, a peer no rule allows to the default class, and relayed
// or vanished peers get no route.
func TestPeerRoutes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.hcl")
	if err := os.WriteFile(path, []byte(`
version = 1
class "interactive" {
  dscp     = "EF"
  priority = 0
}
class "bulk" {
  dscp     = "AF11"
  priority = 2
}
rule "laptop" {
  subjects = ["laptop"]
  kernels  = ["saxpy"]
  gpus     = ["*"]
  class    = "interactive"
}
rule "trainer" {
  subjects = ["trainer"]
  kernels  = ["*"]
  gpus     = ["*"]
  class    = "bulk"
}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	store, err := policy.NewStore(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr
	ep := netip.MustParseAddrPort
	ov := &pathsOverlay{
		peers: map[netip.Addr]string{
			a("100.64.0.2"): "laptop", a("100.64.0.3"): "trainer",
			a("100.64.0.4"): "stranger", a("100.64.0.5"): "relayed",
		},
		paths: []overlay.PeerPath{
			{Addr: a("100.64.0.3"), Endpoint: ep("192.0.2.3:41641")},
			{Addr: a("100.64.0.2"), Endpoint: ep("192.0.2.2:41641")},
			{Addr: a("100.64.0.4"), Endpoint: ep("[2001:db8::4]:41641")},
			{Addr: a("100.64.0.5")},                                  // through DERP
			{Addr: a("100.64.0.6"), Endpoint: ep("192.0.2.6:41641")}, // gone: WhoIs fails
		},
	}
	got, err := peerRoutes(context.Background(), ov, ov, store)
	if err != nil {
		t.Fatal(err)
	}
	want := []tc.PeerRoute{
		{Addr: ep("192.0.2.2:41641"), Class: "interactive"},
		{Addr: ep("192.0.2.3:41641"), Class: "bulk"},
		{Addr: ep("[2001:db8::4]:41641"), Class: policy.DefaultClass},
	}
	if !slices.Equal(got, want) {
		t.Errorf("routes\n got %v\nwant %v", got, want)
	}
}
