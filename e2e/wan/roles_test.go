package wan

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"tailscale.com/client/local"
	"tailscale.com/ipn/store/mem"

	"github.com/gpumesh/gpumesh/e2e/wanlab"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/overlay/tailscaled"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
	"github.com/gpumesh/gpumesh/overlay/wg"
	"github.com/gpumesh/gpumesh/policy"
)

const (
	hostPort   = 41641 // the host's WireGuard UDP port (tailnet mode)
	clientPort = 41642
	rawPort    = 7001 // the host's raw TCP service on the overlay
	quicPort   = 7443 // its QUIC service
)

const wanPolicy = `
version = 1
rule "laptop" {
  subjects = ["laptop", "wg:laptop"]
  kernels  = ["*"]
  gpus     = ["*"]
}
`

// node is an overlay node as the roles use it.
type overlayNode interface {
	overlay.Overlay
	ListenPacket(network, addr string) (net.PacketConn, error)
	Addrs() []netip.Addr
}

var (
	_ overlayNode = (*tsnet.Node)(nil)
	_ overlayNode = (*wg.Node)(nil)
	_ overlayNode = (*tailscaled.Node)(nil)
)

// runTailnet runs the embedded tailnet's servers on R's address towards
// B (reached from A through R's routing, not the stage), prints the
// control URL and serves until stdin closes.
func runTailnet() error {
	tn, err := overlaytest.Start(overlaytest.Options{Addr: wanlab.RouterB.String()})
	if err != nil {
		return err
	}
	defer tn.Close()
	fmt.Printf("CONTROL %s\nREADY\n", tn.ControlURL)
	bufio.NewScanner(os.Stdin).Scan() // until stdin closes
	return nil
}

// join brings up this role's overlay node.
func join(ctx context.Context, mode, name string, port uint16) (overlayNode, error) {
	switch mode {
	case "tailnet":
		n, err := tsnet.New(tsnet.Config{Hostname: name, ControlURL: os.Getenv(envControl), Store: new(mem.Store),
			Ephemeral: true, Port: port})
		if err != nil {
			return nil, err
		}
		if _, err := n.Up(ctx); err != nil {
			n.Close()
			return nil, err
		}
		if err := setTCP(n); err != nil {
			n.Close()
			return nil, err
		}
		return n, nil
	case "tailscaled":
		n, err := tailscaled.New(tailscaled.Config{Socket: os.Getenv(envSocket), Congestion: os.Getenv(envCC)})
		if err != nil {
			return nil, err
		}
		if _, err := n.Up(ctx); err != nil {
			n.Close()
			return nil, err
		}
		return n, nil
	case "wg", "wgtun":
		cfg := wg.Config{Path: os.Getenv(envWGConf)}
		if mode == "wgtun" {
			cfg.Mode, cfg.Congestion = wg.ModeTUN, os.Getenv(envCC)
		}
		n, err := wg.New(cfg)
		if err != nil {
			return nil, err
		}
		if err := n.Up(ctx); err != nil {
			n.Close()
			return nil, err
		}
		if mode == "wg" {
			if err := setTCP(n); err != nil {
				n.Close()
				return nil, err
			}
		}
		return n, nil
	}
	return nil, fmt.Errorf("unknown mode %q", mode)
}

// setTCP applies the netstack TCP settings the parent gave (envTCP).
func setTCP(n interface {
	SetTCPOption(tcpip.SettableTransportProtocolOption) error
}) error {
	opts, err := tcpSettings(os.Getenv(envTCP))
	if err != nil {
		return err
	}
	for _, o := range opts {
		if err := n.SetTCPOption(o); err != nil {
			return err
		}
	}
	return nil
}

// tcpSettings parses "cc=cubic,rbuf=32,sbuf=32,rack=1" (buffers in MiB)
// into netstack TCP options.
func tcpSettings(s string) ([]tcpip.SettableTransportProtocolOption, error) {
	var out []tcpip.SettableTransportProtocolOption
	for _, kv := range strings.Split(s, ",") {
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "cc":
			o := tcpip.CongestionControlOption(v)
			out = append(out, &o)
		case "rbuf", "sbuf":
			mib, err := strconv.Atoi(v)
			if err != nil {
				return nil, fmt.Errorf("tcp setting %q: %w", kv, err)
			}
			if k == "rbuf" {
				out = append(out, &tcpip.TCPReceiveBufferSizeRangeOption{Min: 4096, Default: 1 << 20, Max: mib << 20})
			} else {
				out = append(out, &tcpip.TCPSendBufferSizeRangeOption{Min: 4096, Default: 1 << 20, Max: mib << 20})
			}
		case "rack":
			o := tcpip.TCPRecovery(0)
			if v == "1" {
				o = tcpip.TCPRACKLossDetection
			}
			out = append(out, &o)
		default:
			return nil, fmt.Errorf("unknown tcp setting %q", kv)
		}
	}
	return out, nil
}

// runHost serves the compute endpoint, a raw TCP service and a QUIC
// service on the overlay, prints its overlay address and READY, and
// serves until stdin closes.
func runHost(mode string) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	jctx, jcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer jcancel()
	ov, err := join(jctx, mode, "gpu-host", hostPort)
	if err != nil {
		return err
	}
	defer ov.Close()
	dir, err := os.MkdirTemp("", "wan-policy-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "policy.hcl")
	if err := os.WriteFile(path, []byte(wanPolicy), 0o600); err != nil {
		return err
	}
	store, err := policy.NewStore(path, nil)
	if err != nil {
		return err
	}
	host, err := node.StartHost(ctx, node.HostConfig{Overlay: ov, Name: "gpu-host", Policy: store,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		return err
	}
	defer host.Close()

	ln, err := ov.Listen("tcp", fmt.Sprintf(":%d", rawPort))
	if err != nil {
		return err
	}
	if n, ok := ov.(*tailscaled.Node); ok {
		if err := checkTailscaledHost(n, ln); err != nil {
			ln.Close()
			return err
		}
	}
	var addr netip.Addr
	for _, a := range ov.Addrs() {
		if a.Is4() {
			addr = a
		}
	}
	pc, err := ov.ListenPacket("udp4", netip.AddrPortFrom(addr, quicPort).String())
	if err != nil {
		ln.Close()
		return err
	}
	var wg sync.WaitGroup
	raw := newRawServer(ln)
	wg.Add(1)
	go func() {
		defer wg.Done()
		raw.serve()
	}()
	qs, err := newQUICServer(pc)
	if err != nil {
		raw.close()
		pc.Close()
		wg.Wait()
		return err
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		qs.serve(ctx)
	}()
	fmt.Printf("ADDR %s\nREADY\n", addr)
	bufio.NewScanner(os.Stdin).Scan() // until stdin closes
	cancel()
	raw.close()
	qs.close()
	wg.Wait()
	return nil
}

// runClient joins as "laptop", waits for a direct path to the host
// (tailnet mode), then runs each operation read from stdin and prints
// its result.
func runClient(mode string) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	jctx, jcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer jcancel()
	ov, err := join(jctx, mode, "laptop", clientPort)
	if err != nil {
		return err
	}
	defer ov.Close()
	c, err := newClient(jctx, ov)
	if err != nil {
		return err
	}
	defer c.close()
	if n, ok := ov.(interface{ LocalClient() *local.Client }); ok {
		if err := waitDirect(jctx, n.LocalClient(), c); err != nil {
			return err
		}
	}
	if mode == "tailscaled" || mode == "wgtun" {
		if err := checkCongestion(jctx, ov, c.host); err != nil {
			return err
		}
	}
	fmt.Println("READY")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var o op
		if err := json.Unmarshal(sc.Bytes(), &o); err != nil {
			return fmt.Errorf("client: operation %q: %w", sc.Text(), err)
		}
		r := c.run(ctx, o)
		b, _ := json.Marshal(r)
		fmt.Printf("RESULT %s\n", b)
	}
	return nil
}

// waitDirect calls the host until the path to it is direct.
func waitDirect(ctx context.Context, lc *local.Client, c *client) error {
	for {
		if _, err := c.main.Compute(ctx, "saxpy", saxpyArgs()...); err != nil {
			return fmt.Errorf("waiting for a direct path: %w", err)
		}
		st, err := lc.Status(ctx)
		if err != nil {
			return err
		}
		for _, p := range st.Peer {
			if p.HostName == "gpu-host" && p.CurAddr != "" {
				fmt.Fprintf(os.Stderr, "direct path to gpu-host: %s\n", p.CurAddr)
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return errors.New("no direct path to gpu-host")
		case <-time.After(50 * time.Millisecond): // polling the path
		}
	}
}

func saxpyArgs() []kernel.Arg {
	x := kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32([]int64{16}, make([]float32, 16))}
	return []kernel.Arg{{Kind: kernel.ArgScalar, Scalar: 2}, x, x}
}
