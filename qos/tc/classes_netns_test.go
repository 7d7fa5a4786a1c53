//go:build linux

package tc

import (
	"context"
	"errors"
	"fmt"
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

// treeState is the kernel's view of a shaped link: its HTB classes and its
// u32 filters, without counters or the handles u32 picks, as lines to
// compare.
func treeState(t *testing.T, s *Shaper) []string {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	link := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: s.link}}
	classes, err := s.h.ClassList(link, s.root)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, c := range classes {
		if h, ok := c.(*netlink.HtbClass); ok {
			out = append(out, fmt.Sprintf("class %s rate %d ceil %d prio %d", netlink.HandleStr(h.Handle), h.Rate, h.Ceil, h.Prio))
		}
	}
	filters, err := s.h.FilterList(link, s.root)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range filters {
		u, ok := f.(*netlink.U32)
		if !ok || u.Sel == nil || len(u.Sel.Keys) == 0 {
			continue // the hash tables u32 adds
		}
		out = append(out, fmt.Sprintf("filter prio %d proto %#x -> %s keys %v", u.Priority, u.Protocol, netlink.HandleStr(u.ClassId), u.Sel.Keys))
	}
	slices.Sort(out)
	return out
}

// TestSetClassesRebuildsTree: on a veth in a namespace, SetClasses adds a
// class and renames one; packets marked with each class's DSCP land in the
// new tree's classes, the class that stays keeps its counters and its id,
// the renamed one's old class is gone, and a route to the renamed class
// falls back to the default class until it is re-pointed. A class set the
// shaper refuses, one the kernel refuses halfway (a class id taken behind
// its back), and a failure after the old filters went each leave the old
// tree exactly as it was, still classifying.
func TestSetClassesRebuildsTree(t *testing.T) {
	p := nstest.NewPair(t)
	s, err := Install(Config{Link: p.LinkA, Netns: p.A.Path(), Rate: 12_500_000, Default: "default", Classes: []qos.Class{
		{Name: "gpu", DSCP: dscp.AF41, Priority: 0},
		{Name: "bulk", DSCP: dscp.AF11, Priority: 5},
		{Name: "default", DSCP: dscp.CS0, Priority: 6},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	peer := func(port uint16) netip.AddrPort {
		return netip.AddrPortFrom(netip.MustParseAddr(p.AddrB.String()), port)
	}
	for _, port := range []uint16{5001, 5002} { // sinks, so B answers no ICMP
		p.B.ListenUDP(t, "udp4", net.UDPAddrFromAddrPort(peer(port)))
	}
	senders := map[dscp.Code]*net.UDPConn{}
	for _, c := range []dscp.Code{dscp.AF41, dscp.AF11, dscp.EF, dscp.CS0} {
		senders[c] = p.A.ListenUDP(t, "udp4", &net.UDPAddr{IP: p.AddrA})
		if err := dscp.Mark(senders[c], c); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]uint32{}
	send := func(code dscp.Code, to uint16, n uint32, class string) {
		t.Helper()
		for range n {
			if _, err := senders[code].WriteToUDPAddrPort(make([]byte, 100), peer(to)); err != nil {
				t.Fatal(err)
			}
		}
		want[class] += n
	}
	// check waits for the counters of the classes in want, then wants
	// them exact (the default class also sees the ARP-triggered and
	// stray packets: at least).
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
			if err != nil || (st.Name != "default" && st.Packets != want[st.Name]) {
				t.Fatalf("%s: counters %+v, want %v", step, stats, want)
			}
		}
	}
	if err := s.Route([]PeerRoute{{peer(5001), "bulk"}}); err != nil {
		t.Fatal(err)
	}
	send(dscp.AF41, 5002, 10, "gpu")
	send(dscp.AF11, 5002, 4, "bulk")
	send(dscp.AF41, 5001, 3, "bulk") // routed
	check("installed")
	ids := func() map[string]string {
		m := map[string]string{}
		for _, c := range s.Report().Classes {
			m[c.Name] = c.ClassID
		}
		return m
	}
	before := ids()

	// Add "video", rename "bulk" to "batch".
	if err := s.SetClasses([]qos.Class{
		{Name: "gpu", DSCP: dscp.AF41, Priority: 0},
		{Name: "video", DSCP: dscp.EF, Priority: 1},
		{Name: "batch", DSCP: dscp.AF11, Priority: 5},
		{Name: "default", DSCP: dscp.CS0, Priority: 6},
	}); err != nil {
		t.Fatal(err)
	}
	after := ids()
	if after["gpu"] != before["gpu"] || after["default"] != before["default"] {
		t.Errorf("class ids %v -> %v: gpu and default should keep theirs", before, after)
	}
	if after["batch"] == "" || after["batch"] == before["bulk"] || after["video"] == "" {
		t.Errorf("class ids %v -> %v: batch and video need new ones", before, after)
	}
	if got, want := s.Routes(), []PeerRoute{{peer(5001), "default"}}; !slices.Equal(got, want) {
		t.Errorf("Routes() = %v, want %v: the route to the renamed class falls back to the default", got, want)
	}
	delete(want, "bulk")
	send(dscp.EF, 5002, 6, "video")
	send(dscp.AF11, 5002, 5, "batch")
	send(dscp.AF41, 5002, 2, "gpu") // counted on top of the 10 before
	check("rebuilt")
	for _, line := range treeState(t, s) {
		if strings.Contains(line, before["bulk"]+" ") {
			t.Errorf("the renamed class's old id %s is still in the tree: %s", before["bulk"], line)
		}
	}
	if err := s.Route([]PeerRoute{{peer(5001), "batch"}}); err != nil {
		t.Fatal(err)
	}
	send(dscp.AF41, 5001, 7, "batch")
	check("route re-pointed")

	// Refused before the kernel is touched: the named default is missing.
	state := treeState(t, s)
	report := s.Report()
	if err := s.SetClasses([]qos.Class{{Name: "gpu", DSCP: dscp.AF41}}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("SetClasses without the default class: %v, want ErrInvalidConfig", err)
	}
	// Refused by the kernel halfway: the id the next new class would get
	// is taken behind the shaper's back.
	taken := ""
	for m := firstMinor; taken == ""; m++ {
		id := fmt.Sprintf("9d:%x", m)
		if !slices.ContainsFunc(report.Classes, func(c InstalledClass) bool { return c.ClassID == id }) {
			taken = id
		}
	}
	if out, err := exec.Command("ip", "netns", "exec", p.A.Name, "tc", "class", "add", "dev", p.LinkA,
		"parent", "9d:1", "classid", taken, "htb", "rate", "1mbit").CombinedOutput(); err != nil {
		t.Fatalf("tc class add %s: %v %s", taken, err, out)
	}
	state = treeState(t, s)
	next := []qos.Class{
		{Name: "gpu", DSCP: dscp.AF41, Priority: 0},
		{Name: "video", DSCP: dscp.CS5, Priority: 1, Rate: 1_000_000}, // changed in place first
		{Name: "audio", DSCP: dscp.EF, Priority: 2},                   // new: the taken id
		{Name: "default", DSCP: dscp.CS0, Priority: 6},
	}
	if err := s.SetClasses(next); err == nil || !strings.Contains(err.Error(), taken) {
		t.Errorf("SetClasses onto a taken id %s: %v, want the kernel's refusal naming it", taken, err)
	}
	if got := treeState(t, s); !slices.Equal(got, state) {
		t.Errorf("after a refused change the tree differs:\n got %q\nwant %q", got, state)
	}
	if got := s.Report(); !slices.Equal(got.Classes, report.Classes) {
		t.Errorf("after a refused change Report() = %+v, want %+v", got.Classes, report.Classes)
	}
	exec.Command("ip", "netns", "exec", p.A.Name, "tc", "class", "del", "dev", p.LinkA, "classid", taken).Run()
	state = treeState(t, s)

	// Refused after the old filters went: all of it comes back.
	s.failAt = func(step string) error {
		if step == "break" {
			return errors.New("injected failure after the break")
		}
		return nil
	}
	if err := s.SetClasses(next); err == nil || !strings.Contains(err.Error(), "injected") {
		t.Errorf("SetClasses failing at the break: %v", err)
	}
	s.failAt = nil
	if got := treeState(t, s); !slices.Equal(got, state) {
		t.Errorf("after a change undone at the break the tree differs:\n got %q\nwant %q", got, state)
	}
	send(dscp.EF, 5002, 3, "video")
	send(dscp.AF41, 5001, 2, "batch")
	check("after the refused changes")

	// And the change goes through once nothing is in its way.
	if err := s.SetClasses(next); err != nil {
		t.Fatal(err)
	}
	delete(want, "batch")
	send(dscp.EF, 5002, 4, "audio")
	send(dscp.AF41, 5001, 1, "default") // the route named batch
	check("rebuilt again")
	t.Log("\n" + s.Report().String())
}
