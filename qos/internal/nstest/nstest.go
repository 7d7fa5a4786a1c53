//go:build linux

// Package nstest builds throwaway network namespaces joined by a veth pair
// for qos tests, and captures packets in them (internal/capture). Every name
// starts with "gmq" and carries a random suffix, so parallel tests and
// other engineers' namespaces do not collide. Tests using it skip when
// not root or when ip(8) is missing.
package nstest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/gpumesh/gpumesh/internal/capture"
)

// NS is a named network namespace (/run/netns/Name).
type NS struct {
	Name string
}

// Path is the namespace's bind-mount path.
func (n *NS) Path() string { return "/run/netns/" + n.Name }

// Pair is two namespaces joined by a veth: LinkA (AddrA) in A, LinkB
// (AddrB) in B, both up, IPv4 and IPv6 (no DAD).
type Pair struct {
	A, B         *NS
	LinkA, LinkB string
	AddrA, AddrB net.IP // IPv4
	Addr6A       net.IP // IPv6
	Addr6B       net.IP
}

// Require skips t unless it runs as root with the named tools.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	for _, tool := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
}

// NewPair creates the namespaces and veth and deletes them at cleanup.
func NewPair(t testing.TB) *Pair {
	t.Helper()
	Require(t)
	var rnd [4]byte
	rand.Read(rnd[:])
	id := "gmq" + hex.EncodeToString(rnd[:])
	p := &Pair{
		A: &NS{Name: id + "a"}, B: &NS{Name: id + "b"},
		LinkA: id + "a", LinkB: id + "b",
		AddrA: net.IPv4(10, 77, 0, 1), AddrB: net.IPv4(10, 77, 0, 2),
		Addr6A: net.ParseIP("fd00:77::1"), Addr6B: net.ParseIP("fd00:77::2"),
	}
	for _, ns := range []*NS{p.A, p.B} {
		run(t, "ip", "netns", "add", ns.Name)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns.Name).Run() })
	}
	run(t, "ip", "link", "add", p.LinkA, "netns", p.A.Name, "type", "veth", "peer", "name", p.LinkB, "netns", p.B.Name)
	for _, s := range []struct {
		ns       *NS
		link     string
		ip4, ip6 net.IP
	}{{p.A, p.LinkA, p.AddrA, p.Addr6A}, {p.B, p.LinkB, p.AddrB, p.Addr6B}} {
		run(t, "ip", "-n", s.ns.Name, "addr", "add", s.ip4.String()+"/24", "dev", s.link)
		run(t, "ip", "-n", s.ns.Name, "addr", "add", s.ip6.String()+"/64", "dev", s.link, "nodad")
		run(t, "ip", "-n", s.ns.Name, "link", "set", "lo", "up")
		run(t, "ip", "-n", s.ns.Name, "link", "set", s.link, "up")
	}
	return p
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// Do runs fn on a locked OS thread switched into ns; sockets fn opens
// belong to ns for their whole life.
func (n *NS) Do(fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return fmt.Errorf("nstest: current netns: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromPath(n.Path())
	if err != nil {
		return fmt.Errorf("nstest: %w", err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return fmt.Errorf("nstest: enter %s: %w", n.Name, err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic("nstest: cannot return to the original netns: " + err.Error()) // the thread is unusable
		}
	}()
	return fn()
}

// ListenUDP opens a UDP socket inside ns.
func (n *NS) ListenUDP(t testing.TB, network string, laddr *net.UDPAddr) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	if err := n.Do(func() (err error) {
		c, err = net.ListenUDP(network, laddr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Capture starts a capture on link in n that keeps the packets match
// selects (nil: every frame), and closes it at cleanup.
func (n *NS) Capture(t testing.TB, link string, match func(capture.Packet) bool) *capture.Capture {
	t.Helper()
	c, err := capture.Start(capture.Config{Netns: n.Path(), Interface: link, Match: match})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Every calls fn every interval until it returns true or ctx ends (for
// sending until a capture is complete: a bounded retry, not a sleep).
func Every(ctx context.Context, interval time.Duration, fn func() bool) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for !fn() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// NewNS creates one namespace with lo up and deletes it at cleanup.
func NewNS(t testing.TB) *NS {
	t.Helper()
	Require(t)
	var rnd [4]byte
	rand.Read(rnd[:])
	ns := &NS{Name: "gmq" + hex.EncodeToString(rnd[:])}
	run(t, "ip", "netns", "add", ns.Name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns.Name).Run() })
	run(t, "ip", "-n", ns.Name, "link", "set", "lo", "up")
	return ns
}
