//go:build linux

package qos_test

import (
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/dscp"
	"github.com/gpumesh/gpumesh/internal/capture"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
	"github.com/gpumesh/gpumesh/qos"
	"github.com/gpumesh/gpumesh/qos/internal/nstest"
)

const (
	e2eChildEnv = "GMQ_E2E_NETNS" // set in the child: the namespace it runs in
	e2ePortA    = 41641           // gpu-host's fixed magicsock port
	e2ePortB    = 41642
)

// TestTsnetOuterDSCP: two tsnet nodes on the embedded tailnet, gpu-host's
// magicsock sockets marked AF41 by a qos.Marker; a capture of gpu-host's
// direct UDP packets to the laptop shows DSCP AF41 and the ECN bits
// magicsock sent (Not-ECT) unchanged.
//
// tsnet opens its sockets from goroutines on any thread, so the nodes run
// in a child process started inside a fresh namespace (all traffic stays
// on that namespace's lo). The embedded tailnet listens on 127.0.0.1 only,
// so the two nodes share the namespace rather than sitting on two ends of
// a veth.
func TestTsnetOuterDSCP(t *testing.T) {
	if ns := os.Getenv(e2eChildEnv); ns != "" {
		tsnetOuterDSCPChild(t, &nstest.NS{Name: ns})
		return
	}
	if testing.Short() {
		t.Skip("starts a tailnet (-short)")
	}
	ns := nstest.NewNS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns.Name, os.Args[0],
		"-test.run=^TestTsnetOuterDSCP$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), e2eChildEnv+"="+ns.Name)
	out, err := cmd.CombinedOutput()
	t.Logf("child:\n%s", out)
	if err != nil {
		t.Fatalf("child: %v", err)
	}
}

func tsnetOuterDSCPChild(t *testing.T, ns *nstest.NS) {
	ctx, cancel := context.WithTimeout(context.Background(), 80*time.Second)
	defer cancel()
	tn, err := overlaytest.Start(overlaytest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tn.Close()
	join := func(name string, port uint16) *tsnet.Node {
		cfg := tn.NodeConfig(name)
		cfg.Port = port
		n, err := tsnet.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		if _, err := n.Up(ctx); err != nil {
			t.Fatal(err)
		}
		return n
	}
	host := join("gpu-host", e2ePortA)
	laptop := join("laptop", e2ePortB)

	m := qos.NewMarker(qos.MarkerConfig{Port: e2ePortA, DSCP: dscp.AF41, Interval: 200 * time.Millisecond, Logf: t.Logf})
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer m.Close()

	// Direct UDP from gpu-host to the laptop (DERP runs over TCP).
	const count = 5
	direct := ns.Capture(t, "lo", func(p capture.Packet) bool {
		return p.Protocol == capture.ProtoUDP && p.SrcPort == e2ePortA && p.DstPort == e2ePortB
	})

	ln, err := host.Listen("tcp", ":8080")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		if c, err := ln.Accept(); err == nil {
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	var c net.Conn
	if err := nstest.Every(ctx, 200*time.Millisecond, func() bool {
		c, err = laptop.Dial(ctx, "tcp", net.JoinHostPort(host.Addrs()[0].String(), "8080"))
		return err == nil
	}); err != nil {
		t.Fatalf("dial gpu-host: %v", err)
	}
	// Keep data flowing (gpu-host answers with ACKs) until disco has moved
	// the path from DERP to direct UDP and the capture has its packets.
	buf := make([]byte, 4096)
	if err := nstest.Every(ctx, 20*time.Millisecond, func() bool {
		if direct.Len() >= count {
			return true
		}
		c.Write(buf)
		return false
	}); err != nil {
		t.Fatalf("%d direct UDP packets from gpu-host, want %d: %v", direct.Len(), count, err)
	}
	c.Close()
	<-accepted
	pkts, err := direct.Wait(ctx, count)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pkts {
		t.Logf("captured %v dscp=%s ecn=%d", p, p.DSCP(), p.ECN())
		if p.DSCP() != dscp.AF41 || p.ECN() != 0 {
			t.Errorf("packet tos %#02x, want AF41 with magicsock's Not-ECT (0x88)", p.TOS)
		}
	}
	if st := m.Status(); st.Sockets == 0 {
		t.Errorf("marker found no sockets on port %d: %+v", e2ePortA, st)
	}
}
