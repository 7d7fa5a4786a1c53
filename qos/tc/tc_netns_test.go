//go:build linux

package tc

import (
	"context"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/dscp"
	"github.com/gpumesh/gpumesh/qos"
	"github.com/gpumesh/gpumesh/qos/internal/nstest"
)

var errNoEnt = syscall.ENOENT

func TestProbeInNetns(t *testing.T) {
	p := nstest.NewPair(t)
	sup, err := Probe(ProbeConfig{Netns: p.A.Path()})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(sup)
	if !sup.Has("htb") || !sup.Has("u32") {
		t.Fatalf("htb and u32 should work here: %s", sup)
	}
	if out, _ := exec.Command("ip", "-n", p.A.Name, "link").CombinedOutput(); strings.Contains(string(out), "gmqp") {
		t.Errorf("probe left its veth behind:\n%s", out)
	}
}

// TestHTBCountsMarkedTraffic: with the tree on a veth, packets from a
// socket marked AF41 land in the GPU class, AF11 in bulk, unmarked in the
// default class; Close removes the tree.
func TestHTBCountsMarkedTraffic(t *testing.T) {
	p := nstest.NewPair(t)
	s, err := Install(Config{Link: p.LinkA, Netns: p.A.Path(), Rate: 12_500_000, Classes: []qos.Class{
		{Name: "gpu", DSCP: dscp.AF41, Priority: 0},
		{Name: "bulk", DSCP: dscp.AF11, Priority: 5},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	t.Log("\n" + s.Report().String())

	sink := p.B.ListenUDP(t, "udp4", &net.UDPAddr{IP: p.AddrB})
	gpu := p.A.ListenUDP(t, "udp4", &net.UDPAddr{IP: p.AddrA})
	bulk := p.A.ListenUDP(t, "udp4", &net.UDPAddr{IP: p.AddrA})
	plain := p.A.ListenUDP(t, "udp4", &net.UDPAddr{IP: p.AddrA})
	if err := dscp.Mark(gpu, dscp.AF41); err != nil {
		t.Fatal(err)
	}
	if err := dscp.Mark(bulk, dscp.AF11); err != nil {
		t.Fatal(err)
	}
	want := map[string]uint32{"gpu": 20, "bulk": 10, "unclassified": 5}
	for c, n := range map[*net.UDPConn]uint32{gpu: want["gpu"], bulk: want["bulk"], plain: want["unclassified"]} {
		for range n {
			if _, err := c.WriteTo(make([]byte, 100), sink.LocalAddr()); err != nil {
				t.Fatal(err)
			}
		}
	}

	// The counters move when the packets leave the qdisc (after ARP):
	// poll them, bounded.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var stats []ClassStats
	err = nstest.Every(ctx, 10*time.Millisecond, func() bool {
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
		t.Logf("%s %s: %d packets, %d bytes", st.ClassID, st.Name, st.Packets, st.Bytes)
	}
	if err != nil {
		t.Fatalf("counters never reached %v", want)
	}
	for _, st := range stats {
		if st.Name != "unclassified" && st.Packets != want[st.Name] {
			t.Errorf("class %s counted %d packets, want exactly %d", st.Name, st.Packets, want[st.Name])
		}
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != net.ErrClosed {
		t.Errorf("second Close = %v, want net.ErrClosed", err)
	}
	out, err := exec.Command("ip", "netns", "exec", p.A.Name, "tc", "qdisc", "show", "dev", p.LinkA).CombinedOutput()
	if err == nil && strings.Contains(string(out), "htb") {
		t.Errorf("htb still installed after Close:\n%s", out)
	}
}

func TestInstallRefusesConfiguredRoot(t *testing.T) {
	p := nstest.NewPair(t)
	if out, err := exec.Command("ip", "netns", "exec", p.A.Name, "tc", "qdisc", "add", "dev", p.LinkA, "root", "handle", "5:", "htb").CombinedOutput(); err != nil {
		t.Skipf("tc: %v %s", err, out)
	}
	cfg := Config{Link: p.LinkA, Netns: p.A.Path(), Rate: 1e6, Classes: gpuBulk}
	if _, err := Install(cfg); err == nil || !strings.Contains(err.Error(), "configured root qdisc") {
		t.Fatalf("Install over a configured root: %v, want ErrBusy", err)
	}
	cfg.Replace = true
	s, err := Install(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Report().Replaced; got != "htb" {
		t.Errorf("replaced %q, want htb", got)
	}
	s.Close()
}
