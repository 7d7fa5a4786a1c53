//go:build linux

package wg

import (
	"context"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"tailscale.com/tailcfg"

	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
)

// BenchmarkWG compares, on one veth between two namespaces (root only):
// raw TCP over the veth, two netstack nodes (gpumesh's batching stack, and
// wireguard-go's tun/netstack as before it), two kernel TUN nodes; and two
// tsnet nodes of an embedded tailnet on loopback (in this process, so in
// the root namespace). The "ratios" line reports each against raw TCP,
// the new netstack against the old, and TUN against tsnet, all measured
// in the same run.
func BenchmarkWG(b *testing.B) {
	nsA, nsB := newNS(b), newNS(b)
	ipA, ipB := vethPair(b, nsA, nsB)
	gpu := newMember(b, "gpu-host", "10.77.0.1")
	laptop := newMember(b, "laptop", "10.77.0.2")
	quiet := func(string, ...any) {}
	// nodes starts gpu-host in nsB and laptop in nsA, in mode.
	nodes := func(b *testing.B, mode Mode, legacy bool) (srv, cli *Node) {
		srv = startNodeIn(b, nsB, Config{Mode: mode, TUNName: "gmwbench0", Logf: quiet, legacyNetstack: legacy,
			File: mustParse(b, "gpu.conf", conf(gpu, 51820, peerOf{m: laptop, endpoint: netip.AddrPortFrom(ipA, 51820).String()}))})
		cli = startNodeIn(b, nsA, Config{Mode: mode, TUNName: "gmwbench0", Logf: quiet, legacyNetstack: legacy,
			File: mustParse(b, "laptop.conf", conf(laptop, 51820, peerOf{m: gpu, endpoint: netip.AddrPortFrom(ipB, 51820).String()}))})
		return srv, cli
	}
	netstackPath := func(legacy bool) func(b *testing.B) (net.Listener, func() (net.Conn, error)) {
		return func(b *testing.B) (net.Listener, func() (net.Conn, error)) {
			srv, cli := nodes(b, ModeNetstack, legacy)
			ln, err := srv.Listen("tcp", ":7000")
			if err != nil {
				b.Fatal(err)
			}
			return ln, func() (net.Conn, error) { return cli.Dial(context.Background(), "tcp", "gpu-host:7000") }
		}
	}
	benchPaths(b, []benchPath{
		{"raw", func(b *testing.B) (net.Listener, func() (net.Conn, error)) {
			ln, err := listenIn(nsB, "tcp", netip.AddrPortFrom(ipB, 7000).String())
			if err != nil {
				b.Fatal(err)
			}
			return ln, func() (net.Conn, error) { return dialIn(nsA, "tcp", ln.Addr().String()) }
		}},
		{"netstack", netstackPath(false)},
		{"netstack-legacy", netstackPath(true)},
		{"tun", func(b *testing.B) (net.Listener, func() (net.Conn, error)) {
			if _, err := os.Stat("/dev/net/tun"); err != nil {
				b.Skip("no /dev/net/tun")
			}
			srv, _ := nodes(b, ModeTUN, false)
			var ln net.Listener
			if err := nsB.do(func() (err error) { ln, err = srv.Listen("tcp", ":7000"); return err }); err != nil {
				b.Fatal(err)
			}
			// A plain kernel socket: any program on the host could do this.
			return ln, func() (net.Conn, error) { return dialIn(nsA, "tcp", "10.77.0.1:7000") }
		}},
		{"tsnet", func(b *testing.B) (net.Listener, func() (net.Conn, error)) {
			_, nodes := overlaytest.StartNodes(b, "gpu-host", "laptop")
			waitDirect(b, nodes[1], nodes[0])
			ln, err := nodes[0].Listen("tcp", ":7000")
			if err != nil {
				b.Fatal(err)
			}
			return ln, func() (net.Conn, error) { return nodes[1].Dial(context.Background(), "tcp", "gpu-host:7000") }
		}},
	}, [2]string{"netstack", "netstack-legacy"}, [2]string{"tun", "tsnet"})
}

// waitDirect disco-pings to until from's path to it is direct, not DERP.
func waitDirect(b *testing.B, from, to *tsnet.Node) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lc := from.LocalClient()
	for {
		if _, err := lc.Ping(ctx, to.Addrs()[0], tailcfg.PingDisco); err != nil {
			b.Fatalf("disco ping: %v", err)
		}
		st, err := lc.Status(ctx)
		if err != nil {
			b.Fatal(err)
		}
		for _, p := range st.Peer {
			if p.HostName == to.Hostname() && p.CurAddr != "" {
				return
			}
		}
	}
}
