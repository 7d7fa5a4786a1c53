//go:build linux

package wg

import (
	"context"
	"net"
	"net/netip"
	"os"
	"testing"
)

// BenchmarkWG compares, on one veth between two namespaces (root only):
// raw TCP over the veth, two netstack nodes, and two kernel TUN nodes.
// The "ratios" line reports each mode against raw TCP measured in the
// same run.
func BenchmarkWG(b *testing.B) {
	nsA, nsB := newNS(b), newNS(b)
	ipA, ipB := vethPair(b, nsA, nsB)
	gpu := newMember(b, "gpu-host", "10.77.0.1")
	laptop := newMember(b, "laptop", "10.77.0.2")
	quiet := func(string, ...any) {}
	// nodes starts gpu-host in nsB and laptop in nsA, in mode.
	nodes := func(b *testing.B, mode Mode) (srv, cli *Node) {
		srv = startNodeIn(b, nsB, Config{Mode: mode, TUNName: "gmwbench0", Logf: quiet, File: mustParse(b, "gpu.conf",
			conf(gpu, 51820, peerOf{m: laptop, endpoint: netip.AddrPortFrom(ipA, 51820).String()}))})
		cli = startNodeIn(b, nsA, Config{Mode: mode, TUNName: "gmwbench0", Logf: quiet, File: mustParse(b, "laptop.conf",
			conf(laptop, 51820, peerOf{m: gpu, endpoint: netip.AddrPortFrom(ipB, 51820).String()}))})
		return srv, cli
	}
	benchPaths(b, []benchPath{
		{"raw", func(b *testing.B) (net.Listener, func() (net.Conn, error)) {
			ln, err := listenIn(nsB, "tcp", netip.AddrPortFrom(ipB, 7000).String())
			if err != nil {
				b.Fatal(err)
			}
			return ln, func() (net.Conn, error) { return dialIn(nsA, "tcp", ln.Addr().String()) }
		}},
		{"netstack", func(b *testing.B) (net.Listener, func() (net.Conn, error)) {
			srv, cli := nodes(b, ModeNetstack)
			ln, err := srv.Listen("tcp", ":7000")
			if err != nil {
				b.Fatal(err)
			}
			return ln, func() (net.Conn, error) { return cli.Dial(context.Background(), "tcp", "gpu-host:7000") }
		}},
		{"tun", func(b *testing.B) (net.Listener, func() (net.Conn, error)) {
			if _, err := os.Stat("/dev/net/tun"); err != nil {
				b.Skip("no /dev/net/tun")
			}
			srv, _ := nodes(b, ModeTUN)
			var ln net.Listener
			if err := nsB.do(func() (err error) { ln, err = srv.Listen("tcp", ":7000"); return err }); err != nil {
				b.Fatal(err)
			}
			// A plain kernel socket: any program on the host could do this.
			return ln, func() (net.Conn, error) { return dialIn(nsA, "tcp", "10.77.0.1:7000") }
		}},
	})
}
