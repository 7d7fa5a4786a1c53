// Package wire checks gpumesh's traffic on the wire: a GPU host and a laptop,
// each a separate process in its own network namespace, joined by a veth;
// the laptop runs kernels on the host over the tailnet, and a capture on the
// veth shows the host's WireGuard UDP packets carrying the configured DSCP
// (AF41) with the ECN bits as the sender left them.
//
// Needs root and ip (iproute2); skips otherwise. The addresses are
// TEST-NET-1 on the test's own veth: nothing leaves its namespaces.
package wire

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"tailscale.com/ipn/store/mem"

	"github.com/gpumesh/gpumesh/dscp"
	"github.com/gpumesh/gpumesh/e2e/internal/e2etest"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/internal/capture"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
)

const (
	hostAddr   = "192.0.2.1"
	laptopAddr = "192.0.2.2"
	hostPort   = 41641 // the host's WireGuard UDP port
	laptopPort = 41642
)

const demoPolicy = `
version = 1
class "gpu" {
  dscp     = "AF41"
  priority = 1
}
rule "laptop" {
  subjects = ["laptop"]
  kernels  = ["*"]
  gpus     = ["*"]
  class    = "gpu"
}
`

// TestMain runs a role when the parent test started this binary as one.
func TestMain(m *testing.M) {
	var err error
	switch os.Getenv("GPUMESH_WIRE_ROLE") {
	case "":
		os.Exit(m.Run())
	case "host":
		err = runHost()
	case "laptop":
		err = runLaptop(os.Getenv("GPUMESH_WIRE_CONTROL"))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "role:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// runHost runs the dev tailnet's servers and the GPU host on the veth
// address, prints the control URL, and serves until stdin closes.
func runHost() error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	host, err := e2etest.StartHost(ctx, e2etest.HostOptions{
		Addr: hostAddr, Port: hostPort, Policy: demoPolicy,
		Config: func(n *tsnet.Node, cfg *node.HostConfig) {
			cfg.QoS = &node.QoSConfig{UDPPort: n.UDPPort(), DSCP: dscp.AF41,
				ShapeLink: os.Getenv("GPUMESH_WIRE_LINK"), ShapeRate: 100 << 20}
		},
	})
	if err != nil {
		return err
	}
	defer host.Close()
	if host.QoSStatus().Shaping == "" {
		return fmt.Errorf("no tc tree on %s", os.Getenv("GPUMESH_WIRE_LINK"))
	}
	fmt.Printf("CONTROL %s\nREADY\n", host.ControlURL)
	// Until the parent closes stdin: on "STATS", print the tc classes' counters.
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		for _, c := range host.QoSStatus().ShapingStats {
			fmt.Printf("CLASS %s %d %d\n", c.Name, c.Bytes, c.Packets)
		}
		fmt.Println("END")
	}
	return nil
}

// runLaptop joins, runs matrix multiplies until the path to the host is
// direct (over the veth, not the DERP relay), then a few more.
func runLaptop(controlURL string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n, err := tsnet.New(tsnet.Config{
		Hostname: "laptop", ControlURL: controlURL, Store: new(mem.Store), Ephemeral: true, Port: laptopPort,
	})
	if err != nil {
		return err
	}
	defer n.Close()
	if _, err := n.Up(ctx); err != nil {
		return err
	}
	c, err := node.Dial(n, "gpu-host")
	if err != nil {
		return err
	}
	defer c.Close()
	a := kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32([]int64{64, 64}, make([]float32, 64*64))}
	direct, after := "", 0
	for after < 5 {
		if _, err := c.Compute(ctx, "matrix_mul", a, a); err != nil {
			return err
		}
		if direct == "" {
			st, err := n.LocalClient().Status(ctx)
			if err != nil {
				return err
			}
			for _, p := range st.Peer {
				if p.HostName == "gpu-host" && p.CurAddr != "" {
					direct = p.CurAddr
				}
			}
		} else {
			after++
		}
		if ctx.Err() != nil {
			return fmt.Errorf("no direct path to gpu-host: %w", ctx.Err())
		}
	}
	fmt.Printf("OK direct=%s\n", direct)
	return nil
}

func TestOuterDSCPBetweenNamespaces(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	pair := e2etest.NewPair(t, "gmx", hostAddr, laptopAddr)
	nsA, nsB, vA, vB := pair.NSA, pair.NSB, pair.LinkA, pair.LinkB

	// The host, in namespace A.
	host := exec.Command("ip", "netns", "exec", nsA, self, "-test.run=^$")
	host.Env = append(os.Environ(), "GPUMESH_WIRE_ROLE=host", "GPUMESH_WIRE_LINK="+vA)
	host.Stderr = os.Stderr
	stdin, err := host.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := host.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		host.Wait()
	})
	var control string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if u, ok := strings.CutPrefix(sc.Text(), "CONTROL "); ok {
			control = u
		}
		if sc.Text() == "READY" {
			break
		}
	}
	if control == "" {
		t.Fatal("the host process did not come up")
	}

	// The capture, in namespace B: the host's WireGuard packets as they arrive.
	host4 := netip.MustParseAddr(hostAddr)
	wg, err := capture.Start(capture.Config{Netns: "/run/netns/" + nsB, Interface: vB, Match: func(p capture.Packet) bool {
		return p.Protocol == capture.ProtoUDP && p.Src == host4 && p.SrcPort == hostPort
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { wg.Close() })

	// The laptop, in namespace B.
	laptop := exec.Command("ip", "netns", "exec", nsB, self, "-test.run=^$")
	laptop.Env = append(os.Environ(), "GPUMESH_WIRE_ROLE=laptop", "GPUMESH_WIRE_CONTROL="+control)
	out, err := laptop.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "OK direct=") {
		t.Fatalf("laptop: %v\n%s", err, out)
	}
	t.Logf("laptop: %s", strings.TrimSpace(string(out)))
	if err := wg.Close(); err != nil {
		t.Fatal(err)
	}
	pkts := wg.Packets()
	n, marked := len(pkts), 0
	for _, p := range pkts {
		if p.Dir == capture.In && p.DSCP() == dscp.AF41 && p.ECN() == 0 {
			marked++
		} else {
			t.Errorf("packet %v (DSCP %s, ECN %d); want arriving with DSCP AF41, ECN 0 as sent", p, p.DSCP(), p.ECN())
		}
	}
	if n < 10 {
		t.Fatalf("captured %d WireGuard packets from the host; want at least 10: %v", n, pkts)
	}
	t.Logf("%d of %d WireGuard UDP packets from the host carried AF41 on the veth", marked, n)

	// The host's HTB tree on its veth: the marked packets landed in the
	// policy's "gpu" class.
	fmt.Fprintln(stdin, "STATS")
	packets := map[string]uint64{}
	for sc.Scan() && sc.Text() != "END" {
		var name string
		var bytes, count uint64
		if _, err := fmt.Sscanf(sc.Text(), "CLASS %s %d %d", &name, &bytes, &count); err == nil {
			packets[name] = count
		}
	}
	if packets["gpu"] < uint64(n) {
		t.Errorf("tc class gpu counted %d packets; the capture saw %d AF41 packets leave (classes: %v)", packets["gpu"], n, packets)
	}
	t.Logf("tc classes on the host's veth, packets: %v", packets)
}
