package capture

import (
	"github.com/gpumesh/gpumesh/dscp"

	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var (
	addrA  = netip.MustParseAddr("10.78.0.1")
	addrB  = netip.MustParseAddr("10.78.0.2")
	addr6A = netip.MustParseAddr("fd00:78::1")
	addr6B = netip.MustParseAddr("fd00:78::2")
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (AF_PACKET sockets and network namespaces)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip (iproute2)")
	}
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// newNS creates a network namespace with lo up, deleted at cleanup, and
// returns its name.
func newNS(t *testing.T) string {
	t.Helper()
	var rnd [4]byte
	rand.Read(rnd[:])
	name := "gmc" + hex.EncodeToString(rnd[:])
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

func nsPath(name string) string { return "/run/netns/" + name }

// newPair creates two namespaces joined by a veth whose ends (named like
// their namespaces) have addrA/addr6A and addrB/addr6B.
func newPair(t *testing.T) (a, b string) {
	t.Helper()
	a, b = newNS(t), newNS(t)
	run(t, "ip", "link", "add", a, "netns", a, "type", "veth", "peer", "name", b, "netns", b)
	for _, s := range []struct {
		ns       string
		ip4, ip6 netip.Addr
	}{{a, addrA, addr6A}, {b, addrB, addr6B}} {
		run(t, "ip", "-n", s.ns, "addr", "add", s.ip4.String()+"/24", "dev", s.ns)
		run(t, "ip", "-n", s.ns, "addr", "add", s.ip6.String()+"/64", "dev", s.ns, "nodad")
		run(t, "ip", "-n", s.ns, "link", "set", s.ns, "up")
	}
	return a, b
}

// in runs fn on a thread inside namespace ns: the sockets fn opens belong
// to ns for their whole life.
func in(t *testing.T, ns string, fn func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread is retired with the goroutine.
		runtime.LockOSThread()
		fd, err := unix.Open(nsPath(ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	if err := <-errc; err != nil {
		t.Fatalf("in %s: %v", ns, err)
	}
}

func listenUDP(t *testing.T, ns string, addr netip.Addr) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	in(t, ns, func() (err error) {
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
		return err
	})
	t.Cleanup(func() { c.Close() })
	return c
}

// setTOS sets the TOS byte (IPv4) or traffic class (IPv6) of a socket's packets.
func setTOS(t *testing.T, rc interface{ Control(func(uintptr)) error }, v6 bool, tos int) {
	t.Helper()
	var serr error
	if err := rc.Control(func(fd uintptr) {
		if v6 {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_TCLASS, tos)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TOS, tos)
		}
	}); err != nil || serr != nil {
		t.Fatalf("set tos: %v %v", err, serr)
	}
}

func start(t *testing.T, cfg Config) *Capture {
	t.Helper()
	c, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closeComplete closes c and fails t if the kernel dropped frames.
func closeComplete(t *testing.T, c *Capture) []Packet {
	t.Helper()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if st := c.Stats(); st.Dropped != 0 || st.Kept > st.Frames {
		t.Fatalf("stats %+v: want no drops, kept <= frames", st)
	}
	return c.Packets()
}

// TestUDPBothEndsOfAVeth: five UDP request/reply rounds between two
// namespaces, captured at both ends of their veth: each end sees exactly
// the five requests and five replies, in order, with the direction, TOS
// (DSCP and ECN), addresses, ports and lengths they were sent with.
func TestUDPBothEndsOfAVeth(t *testing.T) {
	needRoot(t)
	nsA, nsB := newPair(t)
	for _, fam := range []struct {
		name       string
		v6         bool
		a, b       netip.Addr
		requestTOS byte
	}{
		{"ipv4", false, addrA, addrB, 0x8a},  // AF41 + ECT(0)
		{"ipv6", true, addr6A, addr6B, 0xb9}, // EF + ECT(1)
	} {
		t.Run(fam.name, func(t *testing.T) {
			ca, cb := listenUDP(t, nsA, fam.a), listenUDP(t, nsB, fam.b)
			rc, _ := ca.SyscallConn()
			setTOS(t, rc, fam.v6, int(fam.requestTOS))
			pa, pb := ca.LocalAddr().(*net.UDPAddr).AddrPort(), cb.LocalAddr().(*net.UDPAddr).AddrPort()
			flow := func(p Packet) bool {
				return p.Protocol == ProtoUDP && (p.SrcPort == pa.Port() || p.DstPort == pa.Port())
			}
			capA := start(t, Config{Netns: nsPath(nsA), Interface: nsA, Match: flow})
			capB := start(t, Config{Netns: nsPath(nsB), Interface: nsB, Match: flow})
			// Loopback traffic in A must not show on A's veth.
			lo := listenUDP(t, nsA, netip.AddrFrom4([4]byte{127, 0, 0, 1}))
			if _, err := lo.WriteToUDPAddrPort([]byte("lo"), lo.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
				t.Fatal(err)
			}

			const rounds = 5
			request, reply := []byte("request"), []byte("a longer reply")
			buf := make([]byte, 64)
			for range rounds {
				if _, err := ca.WriteToUDPAddrPort(request, pb); err != nil {
					t.Fatal(err)
				}
				cb.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, _, err := cb.ReadFromUDPAddrPort(buf); err != nil {
					t.Fatal(err)
				}
				if _, err := cb.WriteToUDPAddrPort(reply, pa); err != nil {
					t.Fatal(err)
				}
				ca.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, _, err := ca.ReadFromUDPAddrPort(buf); err != nil {
					t.Fatal(err)
				}
			}
			// Both ends have queued every frame by now: the reply was read.
			for _, end := range []struct {
				name        string
				c           *Capture
				reqDir, rep Direction
			}{{"A", capA, Out, In}, {"B", capB, In, Out}} {
				pkts := closeComplete(t, end.c)
				if len(pkts) != 2*rounds {
					t.Fatalf("%s's end: %d packets, want %d:\n%v", end.name, len(pkts), 2*rounds, pkts)
				}
				ipHeader := 20
				if fam.v6 {
					ipHeader = 40
				}
				for i, p := range pkts {
					want := Packet{Dir: end.reqDir, TOS: fam.requestTOS, Src: pa.Addr(), Dst: pb.Addr(),
						SrcPort: pa.Port(), DstPort: pb.Port(), Payload: len(request)}
					if i%2 == 1 {
						want = Packet{Dir: end.rep, TOS: 0, Src: pb.Addr(), Dst: pa.Addr(),
							SrcPort: pb.Port(), DstPort: pa.Port(), Payload: len(reply)}
					}
					want.Protocol, want.EtherType, want.Len = ProtoUDP, EtherTypeIPv4, ipHeader+8+want.Payload
					if fam.v6 {
						want.EtherType = EtherTypeIPv6
					}
					if p != want {
						t.Errorf("%s's end, packet %d:\n got %v\nwant %v", end.name, i, p, want)
					}
				}
			}
		})
	}
}

// TestTCPDataSegments: a TCP connection between the namespaces, the
// accepting end marked EF with IP_TOS/IPV6_TCLASS: its data segments,
// captured where the dialler receives them, carry EF and add up to the
// bytes it wrote.
func TestTCPDataSegments(t *testing.T) {
	needRoot(t)
	nsA, nsB := newPair(t)
	for _, fam := range []struct {
		name string
		v6   bool
		b    netip.Addr
	}{{"ipv4", false, addrB}, {"ipv6", true, addr6B}} {
		t.Run(fam.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var ln net.Listener
			in(t, nsB, func() (err error) {
				ln, err = net.Listen("tcp", netip.AddrPortFrom(fam.b, 0).String())
				return err
			})
			defer ln.Close()
			port := ln.Addr().(*net.TCPAddr).AddrPort().Port()
			capA := start(t, Config{Netns: nsPath(nsA), Interface: nsA, Match: func(p Packet) bool {
				return p.Protocol == ProtoTCP && p.SrcPort == port && p.Payload > 0
			}})
			var client net.Conn
			in(t, nsA, func() (err error) {
				client, err = (&net.Dialer{}).DialContext(ctx, "tcp", ln.Addr().String())
				return err
			})
			defer client.Close()
			server, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer server.Close()
			rc, _ := server.(*net.TCPConn).SyscallConn()
			setTOS(t, rc, fam.v6, 0xb8)
			const n = 5000
			go server.Write(make([]byte, n))
			if _, err := io.ReadFull(client, make([]byte, n)); err != nil {
				t.Fatal(err)
			}
			first, err := capA.Wait(ctx, 1)
			if err != nil {
				t.Fatal(err)
			}
			if p := first[0]; p.Dir != In || p.DSCP() != dscp.EF || p.Src != fam.b {
				t.Errorf("first data segment %v: want in, DSCP EF, from %v", p, fam.b)
			}
			total := 0
			for _, p := range closeComplete(t, capA) {
				total += p.Payload
				if p.TOS != 0xb8 {
					t.Errorf("segment %v: want tos 0xb8", p)
				}
			}
			if total != n {
				t.Errorf("data segments carried %d bytes, want %d", total, n)
			}
		})
	}
}

// TestLoopbackOnce: on lo the kernel shows each packet going out and
// coming back in; the capture keeps it once, as In.
func TestLoopbackOnce(t *testing.T) {
	needRoot(t)
	ns := newNS(t)
	loopback := netip.AddrFrom4([4]byte{127, 0, 0, 1})
	a, b := listenUDP(t, ns, loopback), listenUDP(t, ns, loopback)
	pb := b.LocalAddr().(*net.UDPAddr).AddrPort()
	c := start(t, Config{Netns: nsPath(ns), Interface: "lo", Match: func(p Packet) bool { return p.DstPort == pb.Port() }})
	const count = 4
	buf := make([]byte, 16)
	for range count {
		if _, err := a.WriteToUDPAddrPort([]byte("x"), pb); err != nil {
			t.Fatal(err)
		}
		b.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, _, err := b.ReadFromUDPAddrPort(buf); err != nil {
			t.Fatal(err)
		}
	}
	pkts := closeComplete(t, c)
	if len(pkts) != count {
		t.Fatalf("%d packets, want %d:\n%v", len(pkts), count, pkts)
	}
	for _, p := range pkts {
		if p.Dir != In || p.Src != loopback {
			t.Errorf("packet %v: want in, from 127.0.0.1", p)
		}
	}
}

// TestLifecycle: Wait ends with the context or with Close, WaitFor finds a
// packet, and a second Close returns net.ErrClosed.
func TestLifecycle(t *testing.T) {
	needRoot(t)
	ns := newNS(t)
	loopback := netip.AddrFrom4([4]byte{127, 0, 0, 1})
	a := listenUDP(t, ns, loopback)
	pa := a.LocalAddr().(*net.UDPAddr).AddrPort()
	c := start(t, Config{Netns: nsPath(ns), Interface: "lo", Match: func(p Packet) bool { return p.DstPort == pa.Port() }})

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Wait(ctx, 1); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait with a cancelled context: %v, want context.Canceled", err)
	}
	for _, msg := range []string{"one", "three"} {
		if _, err := a.WriteToUDPAddrPort([]byte(msg), pa); err != nil {
			t.Fatal(err)
		}
	}
	wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer wcancel()
	p, err := c.WaitFor(wctx, func(p Packet) bool { return p.Payload == len("three") })
	if err != nil || p.Payload != 5 || c.Len() != 2 {
		t.Fatalf("WaitFor = %v, %v (%d packets kept); want the second packet", p, err, c.Len())
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Wait(wctx, 3); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Wait for more than a closed capture has: %v, want net.ErrClosed", err)
	}
	if pkts, err := c.Wait(wctx, 2); err != nil || len(pkts) != 2 {
		t.Errorf("Wait for what a closed capture has: %v, %v", pkts, err)
	}
	if err := c.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close = %v, want net.ErrClosed", err)
	}
}

// TestStartErrors: what cannot be captured says which interface or
// namespace is wrong (no root needed: these fail before the socket).
func TestStartErrors(t *testing.T) {
	for _, tt := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "no interface named"},
		{Config{Interface: "gmc-nonesuch"}, "interface gmc-nonesuch"},
		{Config{Netns: "/nonexistent/netns", Interface: "lo"}, "/nonexistent/netns"},
	} {
		if c, err := Start(tt.cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
			if c != nil {
				c.Close()
			}
			t.Errorf("Start(%+v) = %v, want an error naming %q", tt.cfg, err, tt.want)
		}
	}
}
