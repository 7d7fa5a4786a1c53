//go:build linux

package wg

import (
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// testNS is a fresh, anonymous network namespace with lo up. It disappears
// when its handle is closed and no socket or thread uses it, so a test
// that dies leaves nothing behind. Interfaces the tests create in it are
// named "gmw…".
type testNS struct {
	ns netns.NsHandle
	nl *netlink.Handle // netlink socket inside ns
}

// requireRoot skips t unless it can create network namespaces.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
}

// newNS creates a namespace; the test's cleanup releases it.
func newNS(t testing.TB) *testNS {
	t.Helper()
	requireRoot(t)
	var h netns.NsHandle
	errc := make(chan error, 1)
	go func() {
		// This thread enters the new namespace and is never unlocked, so
		// the runtime throws it away when the goroutine ends.
		runtime.LockOSThread()
		var err error
		h, err = netns.New()
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Skipf("cannot create a network namespace: %v", err)
	}
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		h.Close()
		t.Fatalf("netlink in namespace: %v", err)
	}
	s := &testNS{ns: h, nl: nl}
	t.Cleanup(func() { nl.Close(); h.Close() })
	lo, err := nl.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	return s
}

// do runs f on an OS thread inside the namespace. Sockets f creates (UDP
// sockets of a node's Up, TUN devices, a net.Dial) belong to the namespace
// for their whole life, whichever thread uses them later.
func (s *testNS) do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(s.ns); err != nil {
			errc <- err
			return
		}
		err = f()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread() // else the locked thread dies with us
		}
		errc <- err
	}()
	return <-errc
}

// vethPair joins a and b with a veth pair "gmwa"/"gmwb" carrying
// 192.168.77.1/24 (a) and 192.168.77.2/24 (b), and returns those addresses.
func vethPair(t testing.TB, a, b *testNS) (netip.Addr, netip.Addr) {
	t.Helper()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "gmwa", MTU: 1500}, PeerName: "gmwb",
		PeerNamespace: netlink.NsFd(int(b.ns))}
	if err := a.nl.LinkAdd(veth); err != nil {
		t.Fatalf("veth: %v", err)
	}
	ipA, ipB := netip.MustParseAddr("192.168.77.1"), netip.MustParseAddr("192.168.77.2")
	for _, end := range []struct {
		ns   *testNS
		name string
		ip   netip.Addr
	}{{a, "gmwa", ipA}, {b, "gmwb", ipB}} {
		link, err := end.ns.nl.LinkByName(end.name)
		if err != nil {
			t.Fatal(err)
		}
		if err := end.ns.nl.AddrAdd(link, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(end.ip, 24))}); err != nil {
			t.Fatal(err)
		}
		if err := end.ns.nl.LinkSetUp(link); err != nil {
			t.Fatal(err)
		}
	}
	return ipA, ipB
}

// startNodeIn brings a node up inside ns; the test closes it.
func startNodeIn(t testing.TB, ns *testNS, cfg Config) *Node {
	t.Helper()
	if cfg.Logf == nil {
		cfg.Logf = t.Logf
	}
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.do(func() error { return n.Up(t.Context()) }); err != nil {
		t.Fatalf("up in namespace: %v", err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// dialIn dials addr with a plain kernel socket from inside ns.
func dialIn(ns *testNS, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := ns.do(func() (err error) {
		c, err = net.Dial(network, addr)
		return err
	})
	return c, err
}

// listenIn listens with a plain kernel socket inside ns.
func listenIn(ns *testNS, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := ns.do(func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}
