package pooltest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/policy"
)

// Caller is the identity every Net host gives its callers.
const Caller = "pool-client"

// Net stands in for the overlay in placement benchmarks: GPU hosts
// (gpusvc servers) listen on 127.0.0.1 under stand-in overlay addresses
// (100.64.0.N, any port) and names, and are listed with their tags, all
// online and on a direct path. A host can stop (its endpoint refuses),
// vanish (every packet to and from it is dropped: its connections hang
// and new ones are never answered, as when a machine loses power), or
// leave the peer list. It is safe for concurrent use.
type Net struct {
	mu    sync.Mutex
	hosts []*Host // guarded by mu
}

// NewNet returns an empty network.
func NewNet() *Net { return &Net{} }

// Host is a GPU host on a Net.
type Host struct {
	Name    string
	Addr    netip.Addr
	Backend gpusvc.Backend

	tags   []string
	policy atomic.Pointer[policy.Policy]
	ln     net.Listener
	srv    *gpusvc.Server
	wg     sync.WaitGroup

	mu     sync.Mutex
	listed bool          // guarded by mu
	gone   chan struct{} // closed when it vanishes; guarded by mu
	closed bool          // guarded by mu
}

// StartHost serves the compute endpoint of a host named name with backend
// b under policy pol (nil: allow everything), carrying tags.
func (n *Net) StartHost(name string, b gpusvc.Backend, pol *policy.Policy, tags ...string) (*Host, error) {
	if pol == nil {
		pol = policy.AllowAllForTest()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("pooltest: listen for %s: %w", name, err)
	}
	h := &Host{Name: name, Backend: b, tags: tags, ln: ln, listed: true, gone: make(chan struct{})}
	h.policy.Store(pol)
	srv, err := gpusvc.NewServer(gpusvc.Config{
		Backend: b,
		WhoIs: func(context.Context, string) (overlay.Identity, error) {
			return overlay.Identity{Node: Caller, StableID: Caller}, nil
		},
		Policy: h.policy.Load,
		Host:   name,
	})
	if err != nil {
		ln.Close()
		return nil, err
	}
	h.srv = srv
	n.mu.Lock()
	h.Addr = netip.AddrFrom4([4]byte{100, 64, 0, byte(len(n.hosts) + 1)})
	n.hosts = append(n.hosts, h)
	n.mu.Unlock()
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		srv.Serve(&holeListener{Listener: ln, h: h})
	}()
	return h, nil
}

// SetPolicy puts pol in force on the host from its next call.
func (h *Host) SetPolicy(pol *policy.Policy) { h.policy.Store(pol) }

// Stop stops the host's endpoint: its connections are reset and new ones
// refused, but it stays in the peer list.
func (h *Host) Stop() {
	h.srv.Stop()
}

// Vanish drops every packet to and from the host from now on.
func (h *Host) Vanish() {
	h.mu.Lock()
	defer h.mu.Unlock()
	select {
	case <-h.gone:
	default:
		close(h.gone)
	}
}

// Return undoes Vanish and Leave: the host is listed and reachable again,
// as a machine that comes back up with the same name.
func (h *Host) Return() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.listed = true
	select {
	case <-h.gone:
		h.gone = make(chan struct{})
	default:
	}
}

// Leave takes the host off the peer list; its packets are dropped too.
func (h *Host) Leave() {
	h.Vanish()
	h.mu.Lock()
	h.listed = false
	h.mu.Unlock()
}

func (h *Host) vanished() bool {
	h.mu.Lock()
	gone := h.gone
	h.mu.Unlock()
	select {
	case <-gone:
		return true
	default:
		return false
	}
}

// Close stops the endpoint and its backend. A second Close returns
// net.ErrClosed.
func (h *Host) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return net.ErrClosed
	}
	h.closed = true
	h.mu.Unlock()
	h.srv.Stop()
	h.wg.Wait()
	return h.Backend.Close()
}

// Close closes every host.
func (n *Net) Close() {
	n.mu.Lock()
	hs := slices.Clone(n.hosts)
	n.mu.Unlock()
	for _, h := range hs {
		h.Close()
	}
}

// Peers lists the hosts on the peer list.
func (n *Net) Peers(context.Context) ([]overlay.Peer, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []overlay.Peer
	for _, h := range n.hosts {
		h.mu.Lock()
		listed := h.listed
		h.mu.Unlock()
		if listed {
			out = append(out, overlay.Peer{Name: h.Name, Tags: h.tags, Addrs: []netip.Addr{h.Addr}, Online: true, Path: overlay.PathDirect})
		}
	}
	return out, nil
}

// errNoPeer is what a dial to an address no listed host holds fails with.
var errNoPeer = errors.New("pooltest: no such peer")

// Dial connects to the host at addr ("100.64.0.N:port" or "name:port";
// the port is not used). A vanished host never answers: the dial waits
// for ctx.
func (n *Net) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	hostPart, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	var h *Host
	for _, x := range n.hosts {
		if x.Name == hostPart || x.Addr.String() == hostPart {
			h = x
		}
	}
	n.mu.Unlock()
	if h == nil {
		return nil, fmt.Errorf("dial %s: %w", addr, errNoPeer)
	}
	h.mu.Lock()
	listed := h.listed
	h.mu.Unlock()
	if !listed {
		return nil, fmt.Errorf("dial %s: %w", addr, errNoPeer)
	}
	if h.vanished() {
		<-ctx.Done()
		return nil, fmt.Errorf("dial %s: %w", addr, ctx.Err())
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, network, h.ln.Addr().String())
	if err != nil {
		return nil, err
	}
	return &holeConn{Conn: c, h: h}, nil
}

// holeListener wraps a host's accepted connections.
type holeListener struct {
	net.Listener
	h *Host
}

func (l *holeListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &holeConn{Conn: c, h: l.h}, nil
}

// holeConn drops what it is asked to send once its host has vanished, so
// both ends' reads wait for data that never comes.
type holeConn struct {
	net.Conn
	h *Host
}

func (c *holeConn) Write(p []byte) (int, error) {
	if c.h.vanished() {
		return len(p), nil
	}
	return c.Conn.Write(p)
}
