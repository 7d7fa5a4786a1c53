// Package offline proves that `gpumesh demo` sends nothing beyond loopback.
//
// The demo runs in a network namespace whose only route off loopback is a
// default route into a veth; the other end of the veth, in a second
// namespace, is captured (internal/capture: an AF_PACKET socket, no
// tcpdump). Two positive controls, a UDP packet sent into the veth before
// the demo starts and another after it ends, show that the capture sees
// what leaves for the demo's whole run, and the kernel's counters show it
// dropped nothing. Every other frame that arrives, except ARP, is a leak.
// Needs root and ip (iproute2); skips otherwise.
package offline

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/internal/capture"
)

const (
	hostAddr = "192.0.2.1" // TEST-NET-1: the demo's namespace
	peerAddr = "192.0.2.2" // the capturing namespace
	// The control packets' destination ports on the peer.
	beforePort = 9
	afterPort  = 10
)

// TestMain doubles as the positive control's sender: run inside the demo's
// namespace with GPUMESH_OFFLINE_SEND set, it sends one UDP packet and exits.
func TestMain(m *testing.M) {
	if dst := os.Getenv("GPUMESH_OFFLINE_SEND"); dst != "" {
		c, err := net.Dial("udp4", dst)
		if err == nil {
			_, err = c.Write([]byte("gpumesh offline control"))
			c.Close()
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func need(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip (iproute2)")
	}
}

func run(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func TestDemoSendsNothingBeyondLoopback(t *testing.T) {
	need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	dir := t.TempDir()
	bin := filepath.Join(dir, "gpumesh")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/gpumesh/gpumesh/cmd/gpumesh")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build gpumesh: %v\n%s", err, out)
	}

	id := os.Getpid() % 100000
	nsA, nsB := fmt.Sprintf("gmo%d-a", id), fmt.Sprintf("gmo%d-b", id)
	vethA, vethB := fmt.Sprintf("gmo%da", id), fmt.Sprintf("gmo%db", id)
	run(t, "ip", "netns", "add", nsA)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", nsA).Run() })
	run(t, "ip", "netns", "add", nsB)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", nsB).Run() })
	run(t, "ip", "link", "add", vethA, "netns", nsA, "type", "veth", "peer", "name", vethB, "netns", nsB)
	for _, ns := range []string{nsA, nsB} {
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	// No IPv6 on the veths: the kernel's own router solicitations would
	// otherwise land in the capture.
	run(t, "ip", "netns", "exec", nsA, "sysctl", "-qw", "net.ipv6.conf."+vethA+".disable_ipv6=1")
	run(t, "ip", "netns", "exec", nsB, "sysctl", "-qw", "net.ipv6.conf."+vethB+".disable_ipv6=1")
	run(t, "ip", "-n", nsA, "addr", "add", hostAddr+"/24", "dev", vethA)
	run(t, "ip", "-n", nsB, "addr", "add", peerAddr+"/24", "dev", vethB)
	run(t, "ip", "-n", nsA, "link", "set", vethA, "up")
	run(t, "ip", "-n", nsB, "link", "set", vethB, "up")
	run(t, "ip", "-n", nsA, "route", "add", "default", "via", peerAddr)

	// Every frame that crosses the peer's end of the veth, from now on.
	c, err := capture.Start(capture.Config{Netns: "/run/netns/" + nsB, Interface: vethB})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	host, peer := netip.MustParseAddr(hostAddr), netip.MustParseAddr(peerAddr)
	isControl := func(port uint16) func(capture.Packet) bool {
		return func(p capture.Packet) bool {
			return p.Dir == capture.In && p.Protocol == capture.ProtoUDP &&
				p.Src == host && p.Dst == peer && p.DstPort == port
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// control sends one UDP packet from the demo's namespace to the peer's
	// port and waits until the capture has it.
	control := func(port uint16) {
		t.Helper()
		send := exec.CommandContext(ctx, "ip", "netns", "exec", nsA, self)
		send.Env = append(os.Environ(), fmt.Sprintf("GPUMESH_OFFLINE_SEND=%s:%d", peerAddr, port))
		if out, err := send.CombinedOutput(); err != nil {
			t.Fatalf("control packet: %v\n%s", err, out)
		}
		if _, err := c.WaitFor(ctx, isControl(port)); err != nil {
			t.Fatalf("the capture missed the control packet to port %d, so it proves nothing: %v", port, err)
		}
	}

	control(beforePort)
	demo := exec.CommandContext(ctx, "ip", "netns", "exec", nsA, bin, "demo")
	demo.Env = append(os.Environ(), "HOME="+dir)
	out, err := demo.CombinedOutput()
	if err != nil {
		t.Fatalf("gpumesh demo in the namespace: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "demo: PASS") {
		t.Fatalf("demo did not pass:\n%s", out)
	}
	control(afterPort)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	st := c.Stats()
	if st.Dropped != 0 {
		t.Fatalf("the kernel dropped %d frames before the capture read them, so it proves nothing (%+v)", st.Dropped, st)
	}

	var leaks []string
	controls := map[uint16]int{}
	for _, p := range c.Packets() {
		switch {
		case p.Dir != capture.In, p.EtherType == capture.EtherTypeARP:
			// The peer's own replies; address resolution for the controls.
		case isControl(beforePort)(p), isControl(afterPort)(p):
			controls[p.DstPort]++
		default:
			leaks = append(leaks, p.String())
		}
	}
	if controls[beforePort] != 1 || controls[afterPort] != 1 {
		t.Errorf("control packets seen %v, want one to each of ports %d and %d", controls, beforePort, afterPort)
	}
	if len(leaks) > 0 {
		t.Fatalf("%d packet(s) left the demo's namespace:\n%s\ndemo output:\n%s", len(leaks), strings.Join(leaks, "\n"), out)
	}
	t.Logf("demo passed in the namespace; the capture saw %d frames: the two control packets, no leak:\n%s", st.Frames, out)
}
