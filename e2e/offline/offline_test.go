// Package offline proves that `gpumesh demo` sends nothing beyond loopback.
//
// The demo runs in a network namespace whose only route off loopback is a
// default route into a veth; the other end of the veth, in a second
// namespace, is captured with tcpdump. A positive control (one UDP packet
// sent into the veth before the demo) shows the capture sees what leaves.
// Needs root, ip (iproute2) and tcpdump; skips otherwise.
package offline

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const (
	hostAddr = "192.0.2.1" // TEST-NET-1: the demo's namespace
	peerAddr = "192.0.2.2" // the capturing namespace
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
	for _, tool := range []string{"ip", "tcpdump"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
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

	pcap := filepath.Join(dir, "leak.pcap")
	capture := exec.Command("ip", "netns", "exec", nsB, "tcpdump", "-i", vethB, "-n", "-U", "--immediate-mode", "-w", pcap, "ip6 or (ip and not src host "+peerAddr+")")
	stderr, err := capture.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := capture.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		capture.Process.Signal(os.Interrupt)
		capture.Wait()
	}
	t.Cleanup(stop)
	// Wait until tcpdump listens.
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		t.Logf("tcpdump: %s", sc.Text())
		if strings.Contains(sc.Text(), "listening on") {
			break
		}
	}
	go func() {
		for sc.Scan() {
			t.Logf("tcpdump: %s", sc.Text())
		}
	}()

	// Positive control: one packet to the peer must show in the capture.
	control := peerAddr + ":9"
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	send := exec.CommandContext(ctx, "ip", "netns", "exec", nsA, self)
	send.Env = append(os.Environ(), "GPUMESH_OFFLINE_SEND="+control)
	if out, err := send.CombinedOutput(); err != nil {
		t.Fatalf("control packet: %v\n%s", err, out)
	}

	demo := exec.CommandContext(ctx, "ip", "netns", "exec", nsA, bin, "demo")
	demo.Env = append(os.Environ(), "HOME="+dir)
	out, err := demo.CombinedOutput()
	if err != nil {
		t.Fatalf("gpumesh demo in the namespace: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "demo: PASS") {
		t.Fatalf("demo did not pass:\n%s", out)
	}
	stop()

	dump, err := exec.Command("tcpdump", "-n", "-r", pcap).CombinedOutput()
	if err != nil {
		t.Fatalf("read capture: %v\n%s", err, dump)
	}
	var controlSeen bool
	var leaks []string
	for _, line := range strings.Split(string(dump), "\n") {
		if !strings.Contains(line, " IP") {
			continue
		}
		if strings.Contains(line, "> "+peerAddr+".9: UDP") {
			controlSeen = true
			continue
		}
		leaks = append(leaks, line)
	}
	if !controlSeen {
		t.Fatalf("the capture missed the control packet, so it proves nothing:\n%s", dump)
	}
	if len(leaks) > 0 {
		t.Fatalf("%d packet(s) left the demo's namespace:\n%s\ndemo output:\n%s", len(leaks), strings.Join(leaks, "\n"), out)
	}
	t.Logf("demo passed in the namespace; the capture saw the control packet and nothing else:\n%s", out)
}
