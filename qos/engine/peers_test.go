package engine

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

// fixedPeers are peers from a fixed table: their paths, and who each
// overlay address is.
type fixedPeers struct {
	peers map[netip.Addr]string
	paths []overlay.PeerPath
}

func (p *fixedPeers) subjectOf(_ context.Context, addr netip.Addr) (policy.Subject, error) {
	name, ok := p.peers[addr]
	if !ok {
		return policy.Subject{}, &net.AddrError{Err: "unknown", Addr: addr.String()}
	}
	return policy.Subject{Node: name}, nil
}

func (p *fixedPeers) peerPaths(context.Context) ([]overlay.PeerPath, error) { return p.paths, nil }

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
	peers := &fixedPeers{
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
	e := &Engine{cfg: Config{Policy: store, PeerPaths: peers.peerPaths, SubjectOf: peers.subjectOf}}
	got, err := e.peerRoutes(context.Background())
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
