package wg

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/gpumesh/gpumesh/dscp"
	"github.com/gpumesh/gpumesh/overlay"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestLoopbackNetstack runs two netstack nodes on 127.0.0.1 (no root): a
// TCP echo crosses the overlay and the server's WhoIs names the client.
func TestLoopbackNetstack(t *testing.T) {
	gpu := newMember(t, "gpu-host", "10.77.0.1")
	laptop := newMember(t, "laptop", "10.77.0.2")
	srv := startNode(t, Config{File: mustParse(t, "gpu.conf", conf(gpu, 0, peerOf{m: laptop}))})
	cli := startNode(t, Config{File: mustParse(t, "laptop.conf",
		conf(laptop, 0, peerOf{m: gpu, endpoint: fmt.Sprintf("127.0.0.1:%d", srv.ListenPort())}))})

	ln, err := srv.Listen("tcp", ":7000")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan string, 2)
	echoServer(t, ln, accepted)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, target := range []string{"gpu-host:7000", "10.77.0.1:7000"} {
		c, err := cli.Dial(ctx, "tcp", target)
		if err != nil {
			t.Fatalf("dial %s: %v", target, err)
		}
		echoOnce(t, c, "hello over wireguard "+target)
		remote := <-accepted
		id, err := srv.WhoIs(ctx, remote)
		if err != nil {
			t.Fatalf("WhoIs(%s): %v", remote, err)
		}
		want := overlay.Identity{Node: "laptop", StableID: laptop.priv.PublicKey().String(),
			Addrs: []netip.Addr{netip.MustParseAddr("10.77.0.2")}, WireGuard: true}
		if fmt.Sprint(id) != fmt.Sprint(want) || id.StableID != want.StableID || !id.WireGuard || len(id.Addrs) != 1 || id.Addrs[0] != want.Addrs[0] {
			t.Errorf("WhoIs(%s) = %+v, want %+v", remote, id, want)
		}
		c.Close()
	}
	// The client sees the server by name too.
	if id, err := cli.WhoIs(ctx, "10.77.0.1:7000"); err != nil || id.Node != "gpu-host" {
		t.Errorf("client WhoIs = %+v, %v", id, err)
	}
	if _, err := srv.WhoIs(ctx, "10.77.0.9:1234"); !errors.Is(err, overlay.ErrUnknownPeer) {
		t.Errorf("WhoIs(unknown) err = %v, want ErrUnknownPeer", err)
	}
	// Each side knows where the other's packets go: the client from its
	// configuration, the server from the client's handshake.
	for _, tt := range []struct {
		n    *Node
		peer string
		port uint16
	}{{srv, "10.77.0.2", cli.ListenPort()}, {cli, "10.77.0.1", srv.ListenPort()}} {
		paths, err := tt.n.PeerPaths(ctx)
		want := []overlay.PeerPath{{Addr: netip.MustParseAddr(tt.peer), Endpoint: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), tt.port)}}
		if err != nil || !slices.Equal(paths, want) {
			t.Errorf("PeerPaths = %v, %v; want %v", paths, err, want)
		}
	}
}

// TestLoopbackStranger: a node that has the server as a peer, but whom the
// server does not list, cannot complete a handshake, so its Dial times out.
func TestLoopbackStranger(t *testing.T) {
	gpu := newMember(t, "gpu-host", "10.77.0.1")
	laptop := newMember(t, "laptop", "10.77.0.2")
	stranger := newMember(t, "stranger", "10.77.0.3")
	srv := startNode(t, Config{File: mustParse(t, "gpu.conf", conf(gpu, 0, peerOf{m: laptop}))})
	str := startNode(t, Config{File: mustParse(t, "stranger.conf",
		conf(stranger, 0, peerOf{m: gpu, endpoint: fmt.Sprintf("127.0.0.1:%d", srv.ListenPort())}))})
	ln, err := srv.Listen("tcp", ":7000")
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, ln, nil)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := str.Dial(ctx, "tcp", "gpu-host:7000")
	if err == nil {
		c.Close()
		t.Fatal("stranger's dial succeeded")
	}
	if ctx.Err() == nil {
		t.Errorf("dial failed before the deadline with %v; want a timeout", err)
	}
}

func TestLifecycle(t *testing.T) {
	gpu := newMember(t, "gpu-host", "10.77.0.1")
	laptop := newMember(t, "laptop", "10.77.0.2")
	n, err := New(Config{File: mustParse(t, "gpu.conf", conf(gpu, 0, peerOf{m: laptop}))})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := n.Listen("tcp", ":1"); !errors.Is(err, ErrNotUp) {
		t.Errorf("Listen before Up: %v, want ErrNotUp", err)
	}
	if _, err := n.Dial(ctx, "tcp", "laptop:1"); !errors.Is(err, ErrNotUp) {
		t.Errorf("Dial before Up: %v, want ErrNotUp", err)
	}
	if _, err := n.WhoIs(ctx, "10.77.0.2:1"); !errors.Is(err, ErrNotUp) {
		t.Errorf("WhoIs before Up: %v, want ErrNotUp", err)
	}
	if err := n.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n.Up(ctx); err == nil {
		t.Error("second Up succeeded")
	}
	if n.ListenPort() == 0 {
		t.Error("ListenPort = 0 after Up")
	}
	if err := n.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := n.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close = %v, want net.ErrClosed", err)
	}
	if err := n.Up(ctx); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Up after Close = %v, want net.ErrClosed", err)
	}
	if _, err := n.Dial(ctx, "tcp", "laptop:1"); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Dial after Close = %v, want net.ErrClosed", err)
	}
	// A node closed before Up closes once, too.
	n2, err := New(Config{File: n.file})
	if err != nil {
		t.Fatal(err)
	}
	if err := n2.Close(); err != nil {
		t.Errorf("Close before Up = %v", err)
	}
	if err := n2.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close before Up = %v", err)
	}
}

func TestNewErrors(t *testing.T) {
	gpu := newMember(t, "gpu-host", "10.77.0.1")
	f := mustParse(t, "gpu.conf", conf(gpu, 0))
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no file", Config{}, "neither File nor Path"},
		{"missing path", Config{Path: "/nonexistent/wg0.conf"}, "no such file"},
		{"bad mode", Config{File: f, Mode: 7}, "unknown mode"},
		{"long tun name", Config{File: f, TUNName: "abcdefghijklmnop"}, "longer than 15"},
		{"dscp range", Config{File: f, DSCP: dscp.Code(65)}, "bad dscp"},
		{"congestion in netstack mode", Config{File: f, Congestion: "bbr"}, "needs the TUN mode"},
		{"unknown congestion", Config{File: f, Mode: ModeTUN, Congestion: "no-such-cc"}, `"no-such-cc"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New = %v, want error containing %q", err, tt.want)
			}
		})
	}
}

func TestDialListenErrors(t *testing.T) {
	gpu := newMember(t, "gpu-host", "10.77.0.1")
	laptop := newMember(t, "laptop", "10.77.0.2")
	n := startNode(t, Config{File: mustParse(t, "gpu.conf", conf(gpu, 0, peerOf{m: laptop}))})
	ctx := context.Background()
	dials := []struct {
		network, addr, want string
		is                  error
	}{
		{"tcp", "nobody:80", "no peer named", ErrNoPeer},
		{"tcp", "192.0.2.1:80", "no peer's AllowedIPs contain 192.0.2.1", ErrNoPeer},
		{"tcp6", "laptop:80", "no single-address AllowedIPs for tcp6", ErrNoPeer},
		{"tcp6", "10.77.0.2:80", "is not a tcp6 address", nil},
		{"unix", "laptop:80", "unsupported network", nil},
		{"tcp", "laptop", "missing port", nil},
		{"tcp", "laptop:http", "bad port", nil},
	}
	for _, d := range dials {
		_, err := n.Dial(ctx, d.network, d.addr)
		if err == nil || !strings.Contains(err.Error(), d.want) || (d.is != nil && !errors.Is(err, d.is)) {
			t.Errorf("Dial(%s, %s) = %v, want %q", d.network, d.addr, err, d.want)
		}
	}
	listens := []struct{ network, addr, want string }{
		{"tcp", "127.0.0.1:80", "not this node's overlay address"},
		{"tcp6", ":80", "no overlay address for tcp6"},
		{"udp", ":80", "unsupported network"},
		{"tcp", "localhost:80", "not an IP address"},
	}
	for _, l := range listens {
		_, err := n.Listen(l.network, l.addr)
		if err == nil || !strings.Contains(err.Error(), l.want) {
			t.Errorf("Listen(%s, %s) = %v, want %q", l.network, l.addr, err, l.want)
		}
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"": ModeNetstack, "netstack": ModeNetstack, "TUN": ModeTUN} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseMode("kernel"); err == nil {
		t.Error("ParseMode(kernel) succeeded")
	}
}

// TestWhoIs covers the lookup rules with a hub peer whose AllowedIPs hold
// the whole overlay, a more specific peer inside it, and the node itself.
func TestWhoIs(t *testing.T) {
	self := newMember(t, "gpu-host", "10.77.0.1")
	laptop := newMember(t, "laptop", "10.77.0.2")
	hub := newMember(t, "hub", "10.77.0.254")
	text := conf(self, 0, peerOf{m: laptop}) +
		fmt.Sprintf("[Peer]\n# Name = hub\nPublicKey = %s\nAllowedIPs = 10.77.0.0/24, fd77::/64\n", hub.priv.PublicKey())
	n := startNode(t, Config{File: mustParse(t, "gpu.conf", text)})
	tests := []struct {
		remote, want string // want "" means ErrUnknownPeer
	}{
		{"10.77.0.2:5555", "laptop"},          // /32 beats the hub's /24
		{"[::ffff:10.77.0.2]:5555", "laptop"}, // v4-mapped, as dual-stack listeners report it
		{"10.77.0.2", "laptop"},               // bare IP
		{"10.77.0.9:1", "hub"},                // only the hub's /24 holds it
		{"[fd77::9]:1", "hub"},                // IPv6
		{"10.77.0.1:40000", ""},               // the node itself
		{"10.78.0.1:1", ""},                   // nobody
		{"127.0.0.1:1", ""},                   // not the overlay
	}
	for _, tt := range tests {
		id, err := n.WhoIs(t.Context(), tt.remote)
		if tt.want == "" {
			if !errors.Is(err, overlay.ErrUnknownPeer) {
				t.Errorf("WhoIs(%s) = %+v, %v; want ErrUnknownPeer", tt.remote, id, err)
			}
			continue
		}
		if err != nil || id.Node != tt.want {
			t.Errorf("WhoIs(%s) = %+v, %v; want %s", tt.remote, id, err, tt.want)
		}
	}
	if _, err := n.WhoIs(t.Context(), "not-an-address"); err == nil || errors.Is(err, overlay.ErrUnknownPeer) {
		t.Errorf("WhoIs(garbage) = %v, want a parse error", err)
	}
	// The hub has no single-address AllowedIPs, so no Addrs and no name to dial.
	if id, _ := n.WhoIs(t.Context(), "10.77.0.9:1"); len(id.Addrs) != 0 || id.StableID != hub.priv.PublicKey().String() {
		t.Errorf("hub identity = %+v", id)
	}
}
