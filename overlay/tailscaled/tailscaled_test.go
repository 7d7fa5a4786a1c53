package tailscaled

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"tailscale.com/ipn/ipnstate"

	"github.com/gpumesh/gpumesh/internal/testtools"
	"github.com/gpumesh/gpumesh/overlay/internal/merge"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
)

// A real tailscaled (make tailscaled) in userspace-networking mode runs
// without root or a namespace; the kernel TUN mode runs in e2e/wan
// (TestThroughLab/tailscaled), which needs root.

// upOn runs a real tailscaled as o says and returns Up's error on it,
// and the node.
func upOn(t *testing.T, o testtools.TailscaledOptions) (*Node, error) {
	t.Helper()
	o.Bin = testtools.Tailscaled(t)
	d, err := testtools.StartTailscaled(t, o)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := New(Config{Socket: d.Socket})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = n.Up(ctx)
	return n, err
}

func TestUpSaysToLogIn(t *testing.T) {
	n, err := upOn(t, testtools.TailscaledOptions{TUN: "userspace-networking"})
	if err == nil || !strings.Contains(err.Error(), "run `tailscale up` first") {
		t.Fatalf("Up on a logged-out tailscaled: %v; want it to say to run tailscale up", err)
	}
	if _, err := n.Listen("tcp", ":1"); err == nil {
		t.Error("Listen after a failed Up succeeded")
	}
	if Usable(t.Context(), n.LocalSocket()) {
		t.Error("Usable says yes to a logged-out tailscaled")
	}
}

func TestUpRefusesUserspaceNetworking(t *testing.T) {
	tn := overlaytest.New(t, overlaytest.Options{})
	n, err := upOn(t, testtools.TailscaledOptions{Name: "gpu-host", TUN: "userspace-networking", ControlURL: tn.ControlURL})
	if err == nil || !strings.Contains(err.Error(), "userspace networking") {
		t.Fatalf("Up on a userspace-networking tailscaled: %v; want a refusal naming userspace networking", err)
	}
	if Usable(t.Context(), n.LocalSocket()) {
		t.Error("Usable says yes to a userspace-networking tailscaled")
	}
}

func TestUpWithoutTailscaled(t *testing.T) {
	n, _ := New(Config{Socket: t.TempDir() + "/none.sock"})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := n.Up(ctx); err == nil || !strings.Contains(err.Error(), "is tailscaled running") {
		t.Fatalf("Up without a tailscaled: %v; want it to ask whether tailscaled runs", err)
	}
}

// TestListenerDropsLocalConnections: the listener drops a connection
// from loopback (this machine's own stack), and closes once.
func TestListenerDropsLocalConnections(t *testing.T) {
	raw, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := merge.Listeners([]net.Listener{raw}, func(c net.Conn) bool { return fromSelf(nil, c) })
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := m.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	c, err := net.Dial("tcp4", raw.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("a loopback connection was kept open")
	}
	if err := m.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if c, ok := <-accepted; ok {
		t.Errorf("Accept handed over the loopback connection from %v", c.RemoteAddr())
	}
	if err := m.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close: %v; want net.ErrClosed", err)
	}
	if _, err := m.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v", err)
	}
}

// TestListenersFollowAddresses: when tailscaled's node changes address,
// a listener moves to the new one on the same port and leaves the old;
// one asked for a single address stays. (Loopback stands in for the
// tailnet interface: the kernel completes a connection before the
// listener drops it as local, so a refused dial means nothing listens.)
func TestListenersFollowAddresses(t *testing.T) {
	old, next := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")
	n := &Node{ifname: "lo", addrs: []netip.Addr{old}, self: &ipnstate.PeerStatus{}, listeners: map[*trackedListener]struct{}{}}
	var logs []string
	n.cfg.Logf = func(format string, args ...any) { logs = append(logs, fmt.Sprintf(format, args...)) }
	all, err := n.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer all.Close()
	one, err := n.Listen("tcp", old.String()+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	port := all.Addr().(*net.TCPAddr).Port
	listening := func(a netip.Addr, port int) bool {
		c, err := net.Dial("tcp4", netip.AddrPortFrom(a, uint16(port)).String())
		if err == nil {
			c.Close()
		}
		return err == nil
	}
	if !listening(old, port) || listening(next, port) {
		t.Fatalf("before the change: listening on %v: %v, on %v: %v", old, listening(old, port), next, listening(next, port))
	}
	n.setAddrs([]netip.Addr{next})
	if listening(old, port) || !listening(next, port) {
		t.Errorf("after the change: listening on %v: %v, on %v: %v; want only the new address", old, listening(old, port), next, listening(next, port))
	}
	if got := all.Addr().String(); got != netip.AddrPortFrom(next, uint16(port)).String() {
		t.Errorf("Addr after the change: %s", got)
	}
	if onePort := one.Addr().(*net.TCPAddr).Port; !listening(old, onePort) {
		t.Errorf("the listener asked for %v moved", old)
	}
	if len(logs) != 1 || !strings.Contains(logs[0], "changed from [127.0.0.2] to [127.0.0.3]") {
		t.Errorf("logs: %q", logs)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if listening(next, port) {
		t.Error("Close left a listener open")
	}
	if err := n.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close: %v", err)
	}
}

// TestFromSelf: connections from loopback, from the node's own tailnet
// addresses and from any address an interface here holds are this
// machine's own; one from elsewhere is not.
func TestFromSelf(t *testing.T) {
	var here netip.Addr
	as, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range as {
		if p, err := netip.ParsePrefix(a.String()); err == nil && !p.Addr().IsLoopback() {
			here = p.Addr()
		}
	}
	self := []netip.Addr{netip.MustParseAddr("100.64.0.1")}
	cases := map[string]bool{"127.0.0.1": true, "::1": true, "100.64.0.1": true, "100.64.0.2": false}
	if here.IsValid() {
		cases[here.String()] = true
	}
	for remote, want := range cases {
		c := fakeConn{remote: netip.AddrPortFrom(netip.MustParseAddr(remote), 4242)}
		if got := fromSelf(self, c); got != want {
			t.Errorf("fromSelf(%s) = %v, want %v", remote, got, want)
		}
	}
}

type fakeConn struct {
	net.Conn
	remote netip.AddrPort
}

func (c fakeConn) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(c.remote) }
