//go:build linux

// Package nstest builds throwaway network namespaces joined by a veth pair
// for qos tests, and captures packets in them with tcpdump. Every name
// starts with "gmq" and carries a random suffix, so parallel tests and
// other engineers' namespaces do not collide. Tests using it skip when
// not root or when ip(8) is missing.
package nstest

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/gpumesh/gpumesh/dscp"
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

// Packet is the IP header part of one captured packet.
type Packet struct {
	IPv6     bool
	TOS      byte // IPv4 TOS or IPv6 traffic class: DSCP<<2 | ECN
	Protocol byte
	SrcPort  uint16
	DstPort  uint16
}

// DSCP returns the packet's code point (never dscp.None: every packet
// carries one, CS0 when unmarked).
func (p Packet) DSCP() dscp.Code {
	c, _ := dscp.Of(p.TOS >> 2) // six bits: always in range
	return c
}

// ECN returns the packet's two ECN bits.
func (p Packet) ECN() uint8 { return p.TOS & 3 }

// Capture runs tcpdump on link in ns for count packets matching filter and
// returns once tcpdump is listening. wait blocks until tcpdump has its
// packets (or ctx ends) and returns them parsed.
func (n *NS) Capture(ctx context.Context, t testing.TB, link, filter string, count int) (wait func() ([]Packet, error)) {
	t.Helper()
	Require(t, "tcpdump")
	file := filepath.Join(t.TempDir(), "capture.pcap")
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", n.Name,
		"tcpdump", "-i", link, "-n", "-U", "-c", fmt.Sprint(count), "-w", file, filter)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// tcpdump says "listening on LINK" once its capture is open.
	var log strings.Builder
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		log.WriteString(sc.Text() + "\n")
		if strings.Contains(sc.Text(), "listening on") {
			break
		}
	}
	done := make(chan error, 1)
	go func() {
		io.Copy(io.Discard, stderr)
		done <- cmd.Wait()
	}()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	return func() ([]Packet, error) {
		select {
		case err := <-done:
			done <- err // for the cleanup
			if err != nil {
				return nil, fmt.Errorf("nstest: tcpdump: %w\n%s", err, log.String())
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("nstest: tcpdump did not get %d packets: %w", count, ctx.Err())
		}
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		return ParsePcap(b)
	}
}

// ParsePcap decodes a classic pcap file of Ethernet frames.
func ParsePcap(b []byte) ([]Packet, error) {
	if len(b) < 24 {
		return nil, errors.New("nstest: short pcap header")
	}
	var bo binary.ByteOrder
	switch binary.LittleEndian.Uint32(b) {
	case 0xa1b2c3d4, 0xa1b23c4d:
		bo = binary.LittleEndian
	case 0xd4c3b2a1, 0x4d3cb2a1:
		bo = binary.BigEndian
	default:
		return nil, errors.New("nstest: not a pcap file")
	}
	if lt := bo.Uint32(b[20:]); lt != 1 {
		return nil, fmt.Errorf("nstest: link type %d, want Ethernet", lt)
	}
	var out []Packet
	for b = b[24:]; len(b) >= 16; {
		incl := int(bo.Uint32(b[8:]))
		if len(b) < 16+incl {
			return out, errors.New("nstest: truncated pcap record")
		}
		frame := b[16 : 16+incl]
		b = b[16+incl:]
		if len(frame) < 14 {
			continue
		}
		eth, ip := binary.BigEndian.Uint16(frame[12:]), frame[14:]
		var p Packet
		var l4 []byte
		switch {
		case eth == 0x0800 && len(ip) >= 20:
			ihl := int(ip[0]&0x0f) * 4
			if ihl < 20 || ihl > len(ip) {
				continue
			}
			p.TOS, p.Protocol = ip[1], ip[9]
			l4 = ip[ihl:]
		case eth == 0x86dd && len(ip) >= 40:
			p.IPv6 = true
			p.TOS = byte(binary.BigEndian.Uint16(ip) >> 4)
			p.Protocol = ip[6]
			l4 = ip[40:]
		default:
			continue
		}
		if len(l4) >= 4 {
			p.SrcPort, p.DstPort = binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:])
		}
		out = append(out, p)
	}
	return out, nil
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
