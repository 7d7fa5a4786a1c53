// Package e2etest holds what gpumesh's end-to-end tests share: two network
// namespaces joined by a veth, and a GPU host with its own embedded
// tailnet on an address in one of them. It imports node and the overlay;
// only tests under e2e use it.
package e2etest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
	"github.com/gpumesh/gpumesh/policy"
)

// Pair is two network namespaces joined by a veth, IPv4 only.
type Pair struct {
	NSA, NSB     string // namespace names
	LinkA, LinkB string // the veth's ends, LinkA in NSA
}

// NewPair creates namespaces "<prefix><pid>-a" and "-b" joined by a veth
// whose ends have addrA and addrB (/24), with IPv6 off so that the overlay
// uses only those addresses. They are deleted at cleanup. It skips tb
// unless it runs as root with ip(8).
func NewPair(tb testing.TB, prefix, addrA, addrB string) *Pair {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		tb.Skip("needs ip (iproute2)")
	}
	id := fmt.Sprintf("%s%d", prefix, os.Getpid()%100000)
	p := &Pair{NSA: id + "-a", NSB: id + "-b", LinkA: id + "a", LinkB: id + "b"}
	for _, ns := range []string{p.NSA, p.NSB} {
		Run(tb, "ip", "netns", "add", ns)
		tb.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	}
	Run(tb, "ip", "link", "add", p.LinkA, "netns", p.NSA, "type", "veth", "peer", "name", p.LinkB, "netns", p.NSB)
	for _, x := range [][3]string{{p.NSA, p.LinkA, addrA}, {p.NSB, p.LinkB, addrB}} {
		Run(tb, "ip", "-n", x[0], "link", "set", "lo", "up")
		Run(tb, "ip", "netns", "exec", x[0], "sysctl", "-qw", "net.ipv6.conf."+x[1]+".disable_ipv6=1")
		Run(tb, "ip", "-n", x[0], "addr", "add", x[2]+"/24", "dev", x[1])
		Run(tb, "ip", "-n", x[0], "link", "set", x[1], "up")
	}
	return p
}

// Run runs a command and fails tb with its output if it fails.
func Run(tb testing.TB, args ...string) {
	tb.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		tb.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// HostOptions say how to start a GPU host.
type HostOptions struct {
	Addr   string // the address its tailnet's servers listen on
	Port   uint16 // its WireGuard UDP port
	Policy string // the policy file's text (HCL)
	// Config completes the host's configuration once its node is up:
	// QoS (the node's UDPPort is known then), a wrapped overlay, a logger.
	Config func(n *tsnet.Node, cfg *node.HostConfig)
}

// Host is a running GPU host named "gpu-host" and its embedded tailnet.
type Host struct {
	*node.Host
	ControlURL string
	close      []func() error
}

// StartHost starts the embedded tailnet's servers on o.Addr, joins
// "gpu-host" to it and starts the host.
func StartHost(ctx context.Context, o HostOptions) (_ *Host, err error) {
	h := &Host{}
	defer func() {
		if err != nil {
			h.Close()
		}
	}()
	tn, err := overlaytest.Start(overlaytest.Options{Addr: o.Addr})
	if err != nil {
		return nil, err
	}
	h.close = append(h.close, tn.Close)
	h.ControlURL = tn.ControlURL
	cfg := tn.NodeConfig("gpu-host")
	cfg.Port = o.Port
	n, err := tsnet.New(cfg)
	if err != nil {
		return nil, err
	}
	h.close = append(h.close, n.Close)
	if _, err := n.Up(ctx); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "e2e-policy-")
	if err != nil {
		return nil, err
	}
	h.close = append(h.close, func() error { return os.RemoveAll(dir) })
	path := filepath.Join(dir, "policy.hcl")
	if err := os.WriteFile(path, []byte(o.Policy), 0o600); err != nil {
		return nil, err
	}
	store, err := policy.NewStore(path, nil)
	if err != nil {
		return nil, err
	}
	hc := node.HostConfig{Overlay: overlay.Overlay(n), Name: "gpu-host", Policy: store}
	if o.Config != nil {
		o.Config(n, &hc)
	}
	if h.Host, err = node.StartHost(ctx, hc); err != nil {
		return nil, err
	}
	h.close = append(h.close, h.Host.Close)
	return h, nil
}

// Close stops the host, its node and its tailnet, in that order.
func (h *Host) Close() error {
	for i := len(h.close) - 1; i >= 0; i-- {
		h.close[i]()
	}
	h.close = nil
	return nil
}
