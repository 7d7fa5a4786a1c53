//go:build linux

package tc

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/gpumesh/gpumesh/dscp"
	"github.com/gpumesh/gpumesh/qos"
	"github.com/gpumesh/gpumesh/qos/internal/nstest"
)

func TestPeerKeys(t *testing.T) {
	tests := []struct {
		addr string
		want []netlink.TcU32Key
	}{
		{"10.1.2.3:41641", []netlink.TcU32Key{
			{Off: 16, Mask: 0xffffffff, Val: 0x0a010203},
			{Off: 20, Mask: 0x0000ffff, Val: 41641},
			{Off: 8, Mask: 0x00ff0000, Val: 0x00110000},
			{Off: 0, Mask: 0x0f000000, Val: 0x05000000},
			{Off: 4, Mask: 0x00001fff, Val: 0},
		}},
		{"[2001:db8::1:2]:5001", []netlink.TcU32Key{
			{Off: 24, Mask: 0xffffffff, Val: 0x20010db8},
			{Off: 28, Mask: 0xffffffff, Val: 0},
			{Off: 32, Mask: 0xffffffff, Val: 0},
			{Off: 36, Mask: 0xffffffff, Val: 0x00010002},
			{Off: 40, Mask: 0x0000ffff, Val: 5001},
			{Off: 4, Mask: 0x0000ff00, Val: 0x00001100},
		}},
	}
	for _, tt := range tests {
		if got := peerKeys(netip.MustParseAddrPort(tt.addr)); !slices.Equal(got, tt.want) {
			t.Errorf("peerKeys(%s):\n got %+v\nwant %+v", tt.addr, got, tt.want)
		}
	}
}

func TestPeerFilters(t *testing.T) {
	routes := []route{
		{PeerRoute{netip.MustParseAddrPort("10.1.2.3:1"), "bulk"}, 0x9d0011},
		{PeerRoute{netip.MustParseAddrPort("[fd00::1]:2"), "gpu"}, 0x9d0010},
	}
	for slot, prios := range peerPrios {
		for _, d := range dscpPrios {
			if max(prios[0], prios[1]) >= min(d[0], d[1]) {
				t.Errorf("slot %d priorities %v not before the DSCP filters' %v", slot, prios, d)
			}
		}
		fs := peerFilters(7, 0x9d0000, prios, routes)
		if len(fs) != 2 {
			t.Fatalf("%d filters, want 2", len(fs))
		}
		for i, want := range []struct {
			proto, prio uint16
			class       uint32
		}{{ethIPv4, prios[0], 0x9d0011}, {ethIPv6, prios[1], 0x9d0010}} {
			u := fs[i].(*netlink.U32)
			a := u.Attrs()
			if a.LinkIndex != 7 || a.Parent != 0x9d0000 || a.Protocol != want.proto || a.Priority != want.prio ||
				u.ClassId != want.class || u.Sel.Flags != netlink.TC_U32_TERMINAL {
				t.Errorf("slot %d filter %d: %+v class %x flags %d, want proto %#x prio %d class %x terminal",
					slot, i, a, u.ClassId, u.Sel.Flags, want.proto, want.prio, want.class)
			}
		}
	}
}

func TestCheckRoutes(t *testing.T) {
	classes := plan(Config{Rate: 1e6, Major: 0x9d, MinShare: 0.1, Default: "unclassified",
		Classes: []qos.Class{{Name: "gpu", DSCP: dscp.AF41}, {Name: "bulk", DSCP: dscp.AF11, Priority: 5}, {Name: "unclassified", Priority: 6}}}, nil)
	r := func(addr, class string) PeerRoute { return PeerRoute{netip.MustParseAddrPort(addr), class} }
	tests := []struct {
		name   string
		routes []PeerRoute
		want   []PeerRoute // nil: an error
	}{
		{"empty", nil, []PeerRoute{}},
		{"sorted, mapped unmapped, duplicate dropped",
			[]PeerRoute{r("[fd00::1]:5", "gpu"), r("[::ffff:10.0.0.2]:7", "bulk"), r("10.0.0.1:9", "unclassified"), r("10.0.0.2:7", "bulk")},
			[]PeerRoute{r("10.0.0.1:9", "unclassified"), r("10.0.0.2:7", "bulk"), r("[fd00::1]:5", "gpu")}},
		{"unknown class goes to the default", []PeerRoute{r("10.0.0.1:9", "gpu"), r("10.0.0.2:9", "video")},
			[]PeerRoute{r("10.0.0.1:9", "gpu"), r("10.0.0.2:9", "unclassified")}},
		{"port 0", []PeerRoute{r("10.0.0.1:0", "gpu")}, nil},
		{"no address", []PeerRoute{{Class: "gpu"}}, nil},
		{"zone", []PeerRoute{r("[fe80::1%eth0]:5", "gpu")}, nil},
		{"conflict", []PeerRoute{r("10.0.0.1:9", "gpu"), r("10.0.0.1:9", "bulk")}, nil},
	}
	for _, tt := range tests {
		got, err := checkRoutes(tt.routes, classes)
		if tt.want == nil {
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("%s: %v, want ErrInvalidConfig", tt.name, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		routes := make([]PeerRoute, len(got))
		for i, g := range got {
			routes[i] = g.PeerRoute
			if c := classes[slices.IndexFunc(classes, func(c InstalledClass) bool { return c.Name == g.Class })]; g.class != c.handle {
				t.Errorf("%s: %s has handle %x, want %x", tt.name, g, g.class, c.handle)
			}
		}
		if !slices.Equal(routes, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, routes, tt.want)
		}
	}
}

// TestRouteBeatsDSCP: with the tree on a veth, packets marked AF41 (the
// gpu class's DSCP) to a routed peer endpoint land in the route's class,
// to other ports in gpu; replacing and removing the routes takes effect,
// a bad address changes nothing, a class the tree lacks means the default
// class, and Close removes everything.
func TestRouteBeatsDSCP(t *testing.T) {
	p := nstest.NewPair(t)
	s, err := Install(Config{Link: p.LinkA, Netns: p.A.Path(), Rate: 12_500_000, Classes: []qos.Class{
		{Name: "gpu", DSCP: dscp.AF41, Priority: 0},
		{Name: "bulk", DSCP: dscp.AF11, Priority: 5},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	peer4 := func(port uint16) netip.AddrPort {
		return netip.AddrPortFrom(netip.MustParseAddr(p.AddrB.String()), port)
	}
	peer6 := func(port uint16) netip.AddrPort {
		return netip.AddrPortFrom(netip.MustParseAddr(p.Addr6B.String()), port)
	}
	for _, port := range []uint16{5001, 5002} { // sinks, so B answers no ICMP
		p.B.ListenUDP(t, "udp4", net.UDPAddrFromAddrPort(peer4(port)))
		p.B.ListenUDP(t, "udp6", net.UDPAddrFromAddrPort(peer6(port)))
	}
	send4 := p.A.ListenUDP(t, "udp4", &net.UDPAddr{IP: p.AddrA})
	send6 := p.A.ListenUDP(t, "udp6", &net.UDPAddr{IP: p.Addr6A})
	for _, c := range []*net.UDPConn{send4, send6} {
		if err := dscp.Mark(c, dscp.AF41); err != nil {
			t.Fatal(err)
		}
	}

	want := map[string]uint32{}
	send := func(to netip.AddrPort, n uint32, class string) {
		t.Helper()
		c := send4
		if to.Addr().Is6() {
			c = send6
		}
		for range n {
			if _, err := c.WriteToUDPAddrPort(make([]byte, 100), to); err != nil {
				t.Fatal(err)
			}
		}
		want[class] += n
	}
	// check waits for the counters (they move when the packets leave the
	// qdisc, after ARP or ND), then wants them exact.
	check := func(step string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var stats []ClassStats
		err := nstest.Every(ctx, 10*time.Millisecond, func() bool {
			if stats, err = s.Stats(); err != nil {
				t.Fatal(err)
			}
			for _, st := range stats {
				if st.Packets < want[st.Name] {
					return false
				}
			}
			return true
		})
		for _, st := range stats {
			if err != nil || (st.Name != "unclassified" && st.Packets != want[st.Name]) {
				t.Fatalf("%s: counters %v, want gpu %d, bulk %d", step, stats, want["gpu"], want["bulk"])
			}
		}
	}
	route := func(routes ...PeerRoute) {
		t.Helper()
		if err := s.Route(routes); err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(routes, func(a, b PeerRoute) int { return a.Addr.Compare(b.Addr) })
		if got := s.Routes(); !slices.Equal(got, routes) {
			t.Fatalf("Routes() = %v, want %v", got, routes)
		}
	}

	route(PeerRoute{peer4(5001), "bulk"}, PeerRoute{peer6(5001), "bulk"})
	send(peer4(5001), 20, "bulk")
	send(peer4(5002), 10, "gpu")
	send(peer6(5001), 7, "bulk")
	send(peer6(5002), 5, "gpu")
	check("routed to 5001")

	if err := s.Route([]PeerRoute{{peer4(5002), "gpu"}, {peer4(0), "bulk"}}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("Route with a bad address: %v, want ErrInvalidConfig", err)
	}
	if got := s.Routes(); len(got) != 2 {
		t.Errorf("after a failed Route, Routes() = %v, want the two old ones", got)
	}
	send(peer4(5001), 3, "bulk")
	send(peer6(5001), 3, "bulk")
	check("after a failed Route")

	route(PeerRoute{peer4(5002), "bulk"}) // the other slot
	send(peer4(5001), 4, "gpu")
	send(peer4(5002), 6, "bulk")
	send(peer6(5001), 2, "gpu")
	check("routed to 5002")

	route(PeerRoute{peer6(5002), "bulk"}, PeerRoute{peer4(5001), "bulk"}) // back to the first slot
	send(peer4(5001), 3, "bulk")
	send(peer4(5002), 3, "gpu")
	send(peer6(5002), 3, "bulk")
	check("routed back")

	if err := s.Route([]PeerRoute{{peer4(5002), "video"}}); err != nil {
		t.Fatal(err)
	}
	if got, want := s.Routes(), []PeerRoute{{peer4(5002), "unclassified"}}; !slices.Equal(got, want) {
		t.Errorf("Routes() = %v, want %v", got, want)
	}
	send(peer4(5002), 5, "unclassified")
	send(peer4(5001), 2, "gpu")
	check("routed to a class the tree lacks")

	route()
	send(peer4(5001), 8, "gpu")
	send(peer6(5001), 4, "gpu")
	send(peer6(5002), 4, "gpu")
	check("no routes")
	if out, err := exec.Command("ip", "netns", "exec", p.A.Name, "tc", "filter", "show", "dev", p.LinkA).CombinedOutput(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, "pref") && !strings.Contains(line, "pref 10 ") && !strings.Contains(line, "pref 11 ") {
				t.Errorf("a filter besides the DSCP ones after Route(nil):\n%s", out)
				break
			}
		}
	}

	route(PeerRoute{peer4(5001), "bulk"})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := s.Routes(); got != nil {
		t.Errorf("Routes() after Close = %v", got)
	}
	if err := s.Route(nil); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Route after Close: %v, want net.ErrClosed", err)
	}
	if out, err := exec.Command("ip", "netns", "exec", p.A.Name, "tc", "filter", "show", "dev", p.LinkA).CombinedOutput(); err == nil && strings.TrimSpace(string(out)) != "" {
		t.Errorf("filters left after Close:\n%s", out)
	}
}
