//go:build linux

package wg

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/gpumesh/gpumesh/overlay/tcpcc"
)

// TestNetnsNetstack: gpu-host and laptop in two namespaces joined by a veth,
// netstack mode, static configs. A TCP echo crosses the overlay, the
// server's WhoIs names the laptop, and a stranger the server does not list
// cannot complete a handshake.
func TestNetnsNetstack(t *testing.T) {
	nsGPU, nsLaptop := newNS(t), newNS(t)
	ipGPU, _ := vethPair(t, nsGPU, nsLaptop)
	gpu := newMember(t, "gpu-host", "10.77.0.1")
	laptop := newMember(t, "laptop", "10.77.0.2")
	stranger := newMember(t, "stranger", "10.77.0.3")
	endpoint := netip.AddrPortFrom(ipGPU, 51820).String()

	srv := startNodeIn(t, nsGPU, Config{File: mustParse(t, "gpu.conf", conf(gpu, 51820, peerOf{m: laptop}))})
	cli := startNodeIn(t, nsLaptop, Config{File: mustParse(t, "laptop.conf", conf(laptop, 51820, peerOf{m: gpu, endpoint: endpoint}))})
	str := startNodeIn(t, nsLaptop, Config{File: mustParse(t, "stranger.conf", conf(stranger, 51821, peerOf{m: gpu, endpoint: endpoint}))})

	ln, err := srv.Listen("tcp", ":7000")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan string, 1)
	echoServer(t, ln, accepted)

	t.Run("echo and whois", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		c, err := cli.Dial(ctx, "tcp", "gpu-host:7000")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		echoOnce(t, c, "kernel launch request")
		remote := <-accepted
		id, err := srv.WhoIs(ctx, remote)
		if err != nil || id.Node != "laptop" || id.StableID != laptop.priv.PublicKey().String() || !id.WireGuard {
			t.Errorf("WhoIs(%s) = %+v, %v; want laptop", remote, id, err)
		}
	})
	t.Run("stranger", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		c, err := str.Dial(ctx, "tcp", "gpu-host:7000")
		if err == nil {
			c.Close()
			t.Fatal("stranger connected")
		}
		if ctx.Err() == nil {
			t.Errorf("stranger's dial failed early (%v), want a handshake timeout", err)
		}
	})
}

// TestNetnsTUN: gpu-host runs in kernel TUN mode in one namespace, laptop
// in netstack mode in another. The interface has the configured address,
// MTU and routes; plain kernel sockets in gpu-host's namespace reach the
// laptop over it; Listen on the TUN node is reachable from the laptop; and
// Close removes the interface.
func TestNetnsTUN(t *testing.T) {
	nsGPU, nsLaptop := newNS(t), newNS(t)
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("no /dev/net/tun")
	}
	ipGPU, ipLaptop := vethPair(t, nsGPU, nsLaptop)
	gpu := newMember(t, "gpu-host", "10.77.0.1")
	laptop := newMember(t, "laptop", "10.77.0.2")
	// The TUN node's sockets run a congestion control that is not the
	// default (checked below).
	cc := tcpcc.Other() // "" where there is none: the subtest skips
	// Both know each other's endpoint: either side may speak first.
	srv := startNodeIn(t, nsGPU, Config{Mode: ModeTUN, TUNName: "gmwtun0", Congestion: cc,
		File: mustParse(t, "gpu.conf", confMTU(gpu, 51820, 1380,
			peerOf{m: laptop, endpoint: netip.AddrPortFrom(ipLaptop, 51820).String()}))})
	cli := startNodeIn(t, nsLaptop, Config{File: mustParse(t, "laptop.conf",
		conf(laptop, 51820, peerOf{m: gpu, endpoint: netip.AddrPortFrom(ipGPU, 51820).String()}))})
	// In TUN mode Listen and Dial use the kernel stack of the calling
	// thread's namespace (the process's, outside tests).
	srvListen := func(addr string) (ln net.Listener, err error) {
		err = nsGPU.do(func() error { ln, err = srv.Listen("tcp", addr); return err })
		return ln, err
	}

	// The interface, as netlink sees it.
	link, err := nsGPU.nl.LinkByName("gmwtun0")
	if err != nil {
		t.Fatalf("TUN interface missing: %v", err)
	}
	if link.Attrs().MTU != 1380 || link.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("link = mtu %d flags %v, want mtu 1380 and up", link.Attrs().MTU, link.Attrs().Flags)
	}
	addrs, err := nsGPU.nl.AddrList(link, netlink.FAMILY_V4)
	if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != "10.77.0.1/24" {
		t.Errorf("addresses = %v, %v; want [10.77.0.1/24]", addrs, err)
	}
	routes, err := nsGPU.nl.RouteGet(net.ParseIP("10.77.0.2"))
	if err != nil || len(routes) == 0 || routes[0].LinkIndex != link.Attrs().Index {
		t.Errorf("route to 10.77.0.2 = %+v, %v; want via gmwtun0", routes, err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	t.Run("plain client over TUN", func(t *testing.T) {
		ln, err := cli.Listen("tcp", ":7000")
		if err != nil {
			t.Fatal(err)
		}
		accepted := make(chan string, 1)
		echoServer(t, ln, accepted)
		c, err := dialIn(nsGPU, "tcp", "10.77.0.2:7000")
		if err != nil {
			t.Fatalf("plain net.Dial over the TUN interface: %v", err)
		}
		defer c.Close()
		echoOnce(t, c, "hello from a plain socket")
		if id, err := cli.WhoIs(ctx, <-accepted); err != nil || id.Node != "gpu-host" {
			t.Errorf("laptop WhoIs = %+v, %v; want gpu-host", id, err)
		}
	})
	t.Run("listen on TUN node", func(t *testing.T) {
		ln, err := srvListen(":7001")
		if err != nil {
			t.Fatal(err)
		}
		if got := ln.Addr().String(); got != "10.77.0.1:7001" {
			t.Errorf("listener address %s, want the overlay address only", got)
		}
		accepted := make(chan string, 1)
		echoServer(t, ln, accepted)
		c, err := cli.Dial(ctx, "tcp", "gpu-host:7001")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		echoOnce(t, c, "hello to the TUN node")
		if id, err := srv.WhoIs(ctx, <-accepted); err != nil || id.Node != "laptop" {
			t.Errorf("gpu-host WhoIs = %+v, %v; want laptop", id, err)
		}
		// Not reachable on the veth address: the listener is overlay-only.
		if c, err := dialIn(nsLaptop, "tcp", netip.AddrPortFrom(ipGPU, 7001).String()); err == nil {
			c.Close()
			t.Error("TUN node's overlay listener answered on the veth address")
		}
	})

	t.Run("congestion control", func(t *testing.T) {
		if cc == "" {
			t.Skipf("needs a TCP congestion control other than the default %s that this process may set; the kernel offers %v", tcpcc.Default(), tcpcc.Available())
		}
		ln, err := srvListen(":7003")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		c, err := cli.Dial(ctx, "tcp", "gpu-host:7003")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		cln, err := cli.Listen("tcp", ":7004")
		if err != nil {
			t.Fatal(err)
		}
		echoServer(t, cln, nil)
		var d net.Conn
		if err := nsGPU.do(func() error { d, err = srv.Dial(ctx, "tcp", "laptop:7004"); return err }); err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		for name, conn := range map[string]net.Conn{"accepted": s, "dialed": d} {
			if got, err := tcpcc.Of(conn.(*net.TCPConn)); err != nil || got != cc {
				t.Errorf("the TUN node's %s connection runs %q (%v); want %q", name, got, err, cc)
			}
		}
	})

	ln, err := srvListen(":7002")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := nsGPU.nl.LinkByName("gmwtun0"); err == nil {
		t.Error("TUN interface still there after Close")
	}
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after node Close = %v, want net.ErrClosed", err)
	}
	if err := srv.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close = %v, want net.ErrClosed", err)
	}
}

// TestNetnsTUNSigterm runs a TUN node in a child process (this test binary,
// re-executed inside a namespace), sends it SIGTERM, and checks that the
// signal path closes the node and the interface is gone.
func TestNetnsTUNSigterm(t *testing.T) {
	ns := newNS(t)
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("no /dev/net/tun")
	}
	gpu := newMember(t, "gpu-host", "10.77.0.1")
	laptop := newMember(t, "laptop", "10.77.0.2")
	path := t.TempDir() + "/gpu.conf"
	if err := os.WriteFile(path, []byte(conf(gpu, 0, peerOf{m: laptop})), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+path)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	// The child inherits the namespace of the thread that forks it.
	if err := ns.do(cmd.Start); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "up" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child did not come up: %q", lines.Text())
	}
	if _, err := ns.nl.LinkByName("gmwsig0"); err != nil {
		t.Errorf("child's TUN interface missing: %v", err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	closed := lines.Scan() && lines.Text() == "closed"
	if err := cmd.Wait(); err != nil || !closed {
		t.Errorf("child after SIGTERM: exit %v, closed cleanly: %v", err, closed)
	}
	if _, err := ns.nl.LinkByName("gmwsig0"); err == nil {
		t.Error("TUN interface still there after SIGTERM")
	}
}

// childEnv names the config file of a TUNSigterm child.
const childEnv = "GPUMESH_WG_TEST_SIGTERM_CHILD"

// sigtermChild is the child process of TestNetnsTUNSigterm: a TUN node
// that lives until SIGTERM, the way gpumesh's main wires signals.
func sigtermChild(path string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	n, err := New(Config{Path: path, Mode: ModeTUN, TUNName: "gmwsig0"})
	if err == nil {
		err = n.Up(ctx)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	fmt.Println("up")
	<-ctx.Done()
	if err := n.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "child: close:", err)
		return 1
	}
	fmt.Println("closed")
	return 0
}

func init() {
	if path := os.Getenv(childEnv); path != "" && strings.HasSuffix(path, ".conf") {
		os.Exit(sigtermChild(path))
	}
}
