// Package devnet is an embedded development tailnet: a control server
// (tailscale.com/tstest/integration/testcontrol), a DERP relay and a STUN
// server, all on 127.0.0.1. `gpumesh demo` and tests join nodes to it; no
// account is needed and nothing leaves the machine: its DERP map names only
// the loopback relay, and nodes it makes upload no logs. Its DERP relay
// speaks plain HTTP, as Headscale's embedded one does, and its nodes dial
// it so because the control URL is http:// (overlay/tsnet).
//
// It is product code, linked into the gpumesh binary: it imports no
// testing (overlay/overlaytest wraps it for tests). Start sets a few
// process-wide Tailscale switches (no SO_MARK or interface binding, the
// network assumed up, no port mapping, no log upload) that a process
// running only this tailnet's nodes wants; a process that also joins a
// real tailnet must not call it.
package devnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http/httptest"
	"sync"

	"tailscale.com/derp/derpserver"
	"tailscale.com/envknob"
	"tailscale.com/ipn/store/mem"
	"tailscale.com/net/netns"
	"tailscale.com/net/stunserver"
	"tailscale.com/tailcfg"
	"tailscale.com/tstest/integration/testcontrol"
	"tailscale.com/types/key"
	"tailscale.com/types/logger"

	"github.com/gpumesh/gpumesh/overlay/tsnet"
)

// Tailnet is a running embedded tailnet.
type Tailnet struct {
	// ControlURL is the control server's URL (http://127.0.0.1:port).
	ControlURL string
	// Control is the control server, for tests that change the tailnet
	// (app capabilities, node tags).
	Control *testcontrol.Server

	logf    logger.Logf
	derp    *derpserver.Server
	derpWeb *httptest.Server
	stun    *stunserver.STUNServer
	stunCtx context.CancelFunc
	stunWG  sync.WaitGroup

	mu     sync.Mutex
	closed bool // guarded by mu
}

// Options tune the embedded tailnet. The zero value works.
type Options struct {
	// Logf receives the control, DERP and node logs; nil discards them.
	Logf logger.Logf
	// TagOwners lists the tags nodes may carry; nil allows the tags that
	// gpumesh's examples use.
	TagOwners map[string][]string
	// Addr is the IP address the control, DERP and STUN servers listen on
	// and advertise; empty means 127.0.0.1. Tests that put nodes in network
	// namespaces of their own use an address on a veth they created.
	Addr string
}

// DefaultTags are the tags the embedded tailnet allows when
// Options.TagOwners is nil: those gpumesh's examples use.
func DefaultTags() []string { return []string{"tag:gpu", "tag:ci", "tag:inference", "tag:ml"} }

// Start runs a control server, a DERP relay and a STUN server on 127.0.0.1.
func Start(opts Options) (_ *Tailnet, err error) {
	logf := opts.Logf
	if logf == nil {
		logf = logger.Discard
	}
	// Nodes here talk over loopback only: no SO_MARK or interface binding,
	// and a namespace holding only lo still counts as "network up".
	netns.SetEnabled(false)
	envknob.Setenv("TS_ASSUME_NETWORK_UP_FOR_TEST", "1")
	envknob.Setenv("TS_DISABLE_PORTMAPPER", "true")
	envknob.SetNoLogsNoSupport()

	addr := opts.Addr
	if addr == "" {
		addr = "127.0.0.1"
	}
	t := &Tailnet{logf: logf}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()

	t.derp = derpserver.New(key.NewNode(), logf)
	ln, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
	if err != nil {
		return nil, fmt.Errorf("devnet: DERP listener: %w", err)
	}
	t.derpWeb = httptest.NewUnstartedServer(derpserver.Handler(t.derp))
	t.derpWeb.Listener.Close()
	t.derpWeb.Listener = ln
	t.derpWeb.Config.ErrorLog = logger.StdLogger(logf)
	// Plain HTTP, as Headscale's embedded DERP: nodes of a control server
	// on http:// dial DERP that way (overlay/tsnet).
	t.derpWeb.Start()

	ctx, cancel := context.WithCancel(context.Background())
	t.stunCtx = cancel
	t.stun = stunserver.New(ctx)
	if err := t.stun.Listen(net.JoinHostPort(addr, "0")); err != nil {
		return nil, fmt.Errorf("devnet: STUN listener: %w", err)
	}
	t.stunWG.Add(1)
	go func() {
		defer t.stunWG.Done()
		t.stun.Serve()
	}()

	derpMap := &tailcfg.DERPMap{
		OmitDefaultRegions: true,
		Regions: map[int]*tailcfg.DERPRegion{
			1: {
				RegionID:   1,
				RegionCode: "local",
				RegionName: "gpumesh dev tailnet (loopback)",
				Nodes: []*tailcfg.DERPNode{{
					Name:       "1a",
					RegionID:   1,
					HostName:   addr,
					IPv4:       addr,
					IPv6:       "none",
					STUNPort:   t.stun.LocalAddr().(*net.UDPAddr).Port,
					DERPPort:   ln.Addr().(*net.TCPAddr).Port,
					STUNTestIP: addr,
				}},
			},
		},
	}

	owners := opts.TagOwners
	if owners == nil {
		owners = make(map[string][]string)
		for _, tag := range DefaultTags() {
			owners[tag] = nil
		}
	}
	t.Control = &testcontrol.Server{
		DERPMap:        derpMap,
		DNSConfig:      &tailcfg.DNSConfig{Proxied: true},
		MagicDNSDomain: "gpumesh.ts.net",
		Logf:           logf,
		TagOwners:      owners,
		AllOnline:      true, // peers show as online in status, as on a real tailnet
	}
	t.Control.HTTPTestServer = httptest.NewUnstartedServer(t.Control)
	if addr != "127.0.0.1" {
		cl, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
		if err != nil {
			return nil, fmt.Errorf("devnet: control listener: %w", err)
		}
		t.Control.HTTPTestServer.Listener.Close()
		t.Control.HTTPTestServer.Listener = cl
	}
	t.Control.HTTPTestServer.Start()
	t.ControlURL = t.Control.HTTPTestServer.URL
	return t, nil
}

// NodeConfig returns the configuration of an ephemeral node named hostname
// on this tailnet, with in-memory state.
func (t *Tailnet) NodeConfig(hostname string, tags ...string) tsnet.Config {
	return tsnet.Config{
		Hostname:   hostname,
		ControlURL: t.ControlURL,
		Store:      new(mem.Store),
		Ephemeral:  true,
		Tags:       tags,
		Logf:       t.logf,
	}
}

// Join starts a node named hostname on this tailnet and waits until it can talk.
func (t *Tailnet) Join(ctx context.Context, hostname string, tags ...string) (*tsnet.Node, error) {
	n, err := tsnet.New(t.NodeConfig(hostname, tags...))
	if err != nil {
		return nil, err
	}
	if _, err := n.Up(ctx); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

// Close stops the control, DERP and STUN servers. A second Close returns
// net.ErrClosed.
func (t *Tailnet) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return net.ErrClosed
	}
	t.closed = true
	t.mu.Unlock()

	var errs []error
	if t.Control != nil && t.Control.HTTPTestServer != nil {
		t.Control.HTTPTestServer.CloseClientConnections()
		t.Control.HTTPTestServer.Close()
	}
	if t.derpWeb != nil {
		t.derpWeb.CloseClientConnections()
		t.derpWeb.Close()
	}
	if t.derp != nil {
		errs = append(errs, t.derp.Close())
	}
	if t.stunCtx != nil {
		t.stunCtx()
		t.stunWG.Wait()
	}
	return errors.Join(errs...)
}
