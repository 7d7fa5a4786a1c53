package wan

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/e2e/wanlab"
	"github.com/gpumesh/gpumesh/internal/testtools"
	"github.com/gpumesh/gpumesh/overlay/tailscaled"
	"github.com/gpumesh/gpumesh/overlay/tcpcc"
)

// The tailscaled mode: a real tailscaled (built by `make tailscaled`) in
// A and in B, each with a kernel TUN interface, joined to the embedded
// tailnet's control server in R; gpumesh in each namespace uses it
// (overlay/tailscaled), so gpumesh's TCP is the kernel's.

const (
	envSocket = "GPUMESH_WAN_TSD_SOCKET" // the namespace's tailscaled LocalAPI socket
	envCC     = "GPUMESH_WAN_CC"         // tailscaled.Config.Congestion
	envCCWant = "GPUMESH_WAN_CC_WANT"    // what the client's connections must report
)

var (
	flagCC    = flag.String("wan.cc", "", "tailscaled and wgtun modes: congestion control of gpumesh's sockets (\"\": BBR where the kernel has it; \"system\": the namespace's default; or a name)")
	flagSysCC = flag.String("wan.syscc", "cubic", "tailscaled and wgtun modes: the namespaces' default TCP congestion control (what a program that sets none gets)")
)

// startTailscaleds runs tailscaled in A (as gpu-host) and in B (as
// laptop), joins both to the tailnet at control, and returns the env of
// the host and the client roles.
func startTailscaleds(tb testing.TB, lab *wanlab.Lab, control string) (hostEnv, clientEnv []string, err error) {
	bin := testtools.Tailscaled(tb)
	common, err := kernelTCPEnv(lab)
	if err != nil {
		return nil, nil, err
	}
	var socks [2]string
	for i, r := range []struct {
		ns   wanlab.Namespace
		name string
		port int
	}{{lab.A, "gpu-host", hostPort}, {lab.B, "laptop", clientPort}} {
		d, err := testtools.StartTailscaled(tb, testtools.TailscaledOptions{Bin: bin, Wrap: r.ns.Command,
			Name: r.name, Port: r.port, TUN: "tailscale0", ControlURL: control, Log: tsdLog(r.name)})
		if err != nil {
			return nil, nil, fmt.Errorf("tailscaled in %s: %w", r.ns.Name, err)
		}
		if !tailscaled.Usable(context.Background(), d.Socket) {
			return nil, nil, fmt.Errorf("tailscaled in %s runs, with a TUN, but tailscaled.Usable says no", r.ns.Name)
		}
		socks[i] = d.Socket
	}
	return append(common, envSocket+"="+socks[0]), append(common, envSocket+"="+socks[1]), nil
}

// checkTailscaledHost checks, in the host role, that the overlay
// listener ln (the raw service, which waits for a request) drops a
// connection from this namespace's own stack to its tailnet address: the
// kernel delivers it, and WhoIs would call it the host itself.
func checkTailscaledHost(n *tailscaled.Node, ln net.Listener) error {
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return nil // refused outright: as good
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(time.Minute)) // a failure's bound, not a measurement
	if _, err := c.Read(make([]byte, 1)); errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("a connection from the host's own stack to %s was kept by the overlay listener (bound to %s)", ln.Addr(), n.Interface())
	}
	return nil
}

// checkCongestion checks, in the client role of a kernel-TCP mode
// (tailscaled, wgtun), that a connection to the host runs the congestion
// control the test wants.
func checkCongestion(ctx context.Context, ov overlayNode, host netip.Addr) error {
	c, err := ov.Dial(ctx, "tcp", netip.AddrPortFrom(host, rawPort).String())
	if err != nil {
		return err
	}
	defer c.Close()
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return fmt.Errorf("connection to the host is a %T, not the kernel's TCP", c)
	}
	cc, err := tcpcc.Of(tc)
	if err != nil {
		return err
	}
	if want := os.Getenv(envCCWant); cc != want {
		return fmt.Errorf("connection to the host runs %q congestion control, want %q", cc, want)
	}
	fmt.Fprintf(os.Stderr, "connection to the host runs %s\n", cc)
	return nil
}

// kernelTCPEnv sets the namespaces' default congestion control (what a
// program that sets none gets) and returns the roles' env for the
// congestion control of gpumesh's sockets.
func kernelTCPEnv(lab *wanlab.Lab) ([]string, error) {
	for _, ns := range []wanlab.Namespace{lab.A, lab.B} {
		if out, err := ns.Command("sysctl", "-w", "net.ipv4.tcp_congestion_control="+*flagSysCC).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("default congestion control in %s: %v: %s", ns.Name, err, out)
		}
	}
	want := *flagCC
	switch want {
	case "":
		want = "bbr"
	case "system":
		want = *flagSysCC
	}
	return []string{envCC + "=" + *flagCC, envCCWant + "=" + want}, nil
}

// tsdLog is where a tailscaled's log goes: stderr with -test.v, else
// nowhere (it is chatty).
func tsdLog(name string) io.Writer {
	if testing.Verbose() {
		return &prefixWriter{prefix: "tailscaled " + name + ": ", w: os.Stderr}
	}
	return nil
}
