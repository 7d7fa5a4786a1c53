package qos

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	gvwaiter "gvisor.dev/gvisor/pkg/waiter"

	"github.com/gpumesh/gpumesh/dscp"
)

// wrapped exposes the connection it wraps, as *tls.Conn does.
type wrapped struct{ net.Conn }

func (w wrapped) NetConn() net.Conn { return w.Conn }

// hidden wraps a connection without saying which.
type hidden struct{ net.Conn }

// segment is one TCP segment a netstack sent.
type segment struct {
	tos     byte // IPv4 TOS or IPv6 traffic class
	srcPort uint16
	data    int // payload bytes
}

func parseSegment(t *testing.T, pkt []byte) segment {
	t.Helper()
	var tos uint8
	var l4 []byte
	switch header.IPVersion(pkt) {
	case header.IPv4Version:
		ip := header.IPv4(pkt)
		tos, _ = ip.TOS()
		l4 = ip.Payload()
	case header.IPv6Version:
		ip := header.IPv6(pkt)
		tos, _ = ip.TOS()
		l4 = ip.Payload()
	default:
		t.Fatalf("not an IP packet: % x", pkt)
	}
	if len(l4) < header.TCPMinimumSize {
		t.Fatalf("short TCP segment: % x", pkt)
	}
	seg := header.TCP(l4)
	return segment{tos: tos, srcPort: seg.SourcePort(), data: len(seg.Payload())}
}

// netstackPair is two gVisor stacks joined by channel link endpoints; a
// pump per direction moves the packets across and shows each to observe.
type netstackPair struct {
	client, server *stack.Stack
	cAddr, sAddr   tcpip.Address
	proto          tcpip.NetworkProtocolNumber

	mu   sync.Mutex
	sent [][]byte // packets the server stack sent; guarded by mu
}

func newNetstackPair(t *testing.T, v6 bool) *netstackPair {
	t.Helper()
	p := &netstackPair{
		proto: ipv4.ProtocolNumber,
		cAddr: tcpip.AddrFrom4([4]byte{10, 9, 0, 1}),
		sAddr: tcpip.AddrFrom4([4]byte{10, 9, 0, 2}),
	}
	if v6 {
		p.proto = ipv6.ProtocolNumber
		p.cAddr = tcpip.AddrFrom16([16]byte{0xfd, 0x09, 15: 1})
		p.sAddr = tcpip.AddrFrom16([16]byte{0xfd, 0x09, 15: 2})
	}
	cep, sep := channel.New(256, 1500, ""), channel.New(256, 1500, "")
	p.client = newNetstack(t, cep, p.proto, p.cAddr)
	p.server = newNetstack(t, sep, p.proto, p.sAddr)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); pump(ctx, cep, sep, nil) }()
	go func() {
		defer wg.Done()
		pump(ctx, sep, cep, func(pkt []byte) {
			p.mu.Lock()
			p.sent = append(p.sent, pkt)
			p.mu.Unlock()
		})
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		for _, s := range []*stack.Stack{p.client, p.server} {
			s.Close()
			s.Wait()
		}
	})
	return p
}

func newNetstack(t *testing.T, ep *channel.Endpoint, proto tcpip.NetworkProtocolNumber, addr tcpip.Address) *stack.Stack {
	t.Helper()
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	if err := s.CreateNIC(1, ep); err != nil {
		t.Fatalf("create nic: %s", err)
	}
	if err := s.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: addr.WithPrefix()}, stack.AddressProperties{}); err != nil {
		t.Fatalf("add address: %s", err)
	}
	s.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: 1},
		{Destination: header.IPv6EmptySubnet, NIC: 1},
	})
	return s
}

// pump moves packets sent on from into to until ctx ends.
func pump(ctx context.Context, from, to *channel.Endpoint, observe func([]byte)) {
	for {
		pkt := from.ReadContext(ctx)
		if pkt == nil {
			return
		}
		proto := pkt.NetworkProtocolNumber
		b := pkt.ToView().AsSlice()
		pkt.DecRef()
		if observe != nil {
			observe(b)
		}
		in := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
		to.InjectInbound(proto, in)
		in.DecRef()
	}
}

// dial connects the client stack to a listener on the server stack and
// returns both ends.
func (p *netstackPair) dial(t *testing.T) (client, server *gonet.TCPConn) {
	t.Helper()
	ln, err := gonet.ListenTCP(p.server, tcpip.FullAddress{NIC: 1, Addr: p.sAddr, Port: 7000}, p.proto)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type accepted struct {
		c   net.Conn
		err error
	}
	acc := make(chan accepted, 1)
	go func() { c, err := ln.Accept(); acc <- accepted{c, err} }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err = gonet.DialContextTCP(ctx, p.client, tcpip.FullAddress{NIC: 1, Addr: p.sAddr, Port: 7000}, p.proto)
	if err != nil {
		t.Fatal(err)
	}
	a := <-acc
	if a.err != nil {
		t.Fatal(a.err)
	}
	t.Cleanup(func() { client.Close(); a.c.Close() })
	return client, a.c.(*gonet.TCPConn)
}

// send writes n bytes on server, reads them all on client, and returns the
// data segments the server stack sent meanwhile. Every packet is recorded
// before it is delivered, so once the client has the bytes, the record
// holds their segments.
func (p *netstackPair) send(t *testing.T, server, client net.Conn, n int) []segment {
	t.Helper()
	p.mu.Lock()
	p.sent = nil
	p.mu.Unlock()
	werr := make(chan error, 1)
	go func() { _, err := server.Write(make([]byte, n)); werr <- err }()
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(client, make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var segs []segment
	for _, pkt := range p.sent {
		if s := parseSegment(t, pkt); s.data > 0 {
			segs = append(segs, s)
		}
	}
	return segs
}

// TestSetConnDSCPNetstack: after SetConnDSCP on the accepting end of a
// gVisor TCP connection, every data segment it sends carries the DSCP in
// the IPv4 TOS or IPv6 traffic class byte; before, none did.
func TestSetConnDSCPNetstack(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		name := map[bool]string{false: "ipv4", true: "ipv6"}[v6]
		t.Run(name, func(t *testing.T) {
			// Registered first, so it runs after the stacks' cleanups.
			opt := goleak.IgnoreCurrent()
			t.Cleanup(func() { goleak.VerifyNone(t, opt) })
			p := newNetstackPair(t, v6)
			client, server := p.dial(t)

			const n = 20000 // several segments at MTU 1500
			before := p.send(t, server, client, n)
			if len(before) < 2 {
				t.Fatalf("%d data segments before marking, want several", len(before))
			}
			for _, s := range before {
				if s.tos != 0 {
					t.Fatalf("unmarked segment has tos %#02x", s.tos)
				}
			}

			if err := SetConnDSCP(server, dscp.EF); err != nil {
				t.Fatal(err)
			}
			after := p.send(t, server, client, n)
			if len(after) < 2 {
				t.Fatalf("%d data segments after marking, want several", len(after))
			}
			for i, s := range after {
				if s.tos != dscp.EF.TOS(0) {
					t.Fatalf("data segment %d of %d from port %d: tos %#02x, want DSCP EF (%#02x)", i+1, len(after), s.srcPort, s.tos, dscp.EF.TOS(0))
				}
			}

			// The client's own segments stay unmarked: the option is per
			// endpoint.
			if tos := netstackTOS(t, client); tos != 0 {
				t.Errorf("client endpoint tos %#02x, want 0", tos)
			}
		})
	}
}

func netstackTOS(t *testing.T, c *gonet.TCPConn) byte {
	t.Helper()
	ep, err := gonetEndpoint(c)
	if err != nil {
		t.Fatal(err)
	}
	v, terr := ep.GetSockOptInt(tcpip.IPv4TOSOption)
	if terr != nil {
		t.Fatalf("get tos: %s", terr)
	}
	return byte(v)
}

// TestSetConnDSCPUnwraps: wrappers with NetConn are followed to the
// netstack connection; connections SetConnDSCP cannot reach give
// ErrNoInnerDSCP naming their type.
func TestSetConnDSCPUnwraps(t *testing.T) {
	p := newNetstackPair(t, false)
	_, server := p.dial(t)
	pa, pb := net.Pipe()
	defer pa.Close()
	defer pb.Close()

	tests := []struct {
		name    string
		conn    net.Conn
		code    dscp.Code
		wantErr error  // nil: marked
		errType string // in the error message
	}{
		{"gonet", server, 8, nil, ""},
		{"NetConn", wrapped{server}, dscp.AF41, nil, ""},
		{"NetConn twice", wrapped{wrapped{server}}, 10, nil, ""},
		{"tls.Conn", tls.Server(server, &tls.Config{}), dscp.EF, nil, ""},
		{"tls over NetConn", tls.Client(wrapped{server}, &tls.Config{}), 26, nil, ""},
		{"hidden", hidden{server}, dscp.EF, ErrNoInnerDSCP, "qos.hidden"},
		{"NetConn to hidden", wrapped{hidden{server}}, dscp.EF, ErrNoInnerDSCP, "qos.hidden"},
		{"net.Pipe", pa, dscp.EF, ErrNoInnerDSCP, "*net.pipe"},
		{"nil", nil, dscp.EF, ErrNoInnerDSCP, "<nil>"},
		{"dscp 64", server, dscp.Code(65), dscp.ErrBad, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := netstackTOS(t, server)
			err := SetConnDSCP(tt.conn, tt.code)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				if got := netstackTOS(t, server); got != tt.code.TOS(0) {
					t.Errorf("endpoint tos %#02x, want %#02x", got, tt.code.TOS(0))
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.errType) {
				t.Errorf("error %q does not name the type %s", err, tt.errType)
			}
			if got := netstackTOS(t, server); got != before {
				t.Errorf("failed call changed the tos from %#02x to %#02x", before, got)
			}
		})
	}
}

// TestGonetLayout guards the reflection in gonetEndpoint: gonet.TCPConn
// must still keep its endpoint in a field ep of type tcpip.Endpoint, and
// gonetEndpoint must return exactly the endpoint NewTCPConn was given. If
// this fails after a gVisor upgrade, netstack connections are no longer
// marked; fix gonetEndpoint (or use an accessor, if gonet now has one).
func TestGonetLayout(t *testing.T) {
	f, ok := reflect.TypeFor[gonet.TCPConn]().FieldByName("ep")
	if !ok {
		t.Fatal("gonet.TCPConn has no field ep: gvisor changed, fix gonetEndpoint")
	}
	if want := reflect.TypeFor[tcpip.Endpoint](); f.Type != want {
		t.Fatalf("gonet.TCPConn.ep is a %v, want %v: gvisor changed, fix gonetEndpoint", f.Type, want)
	}

	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	defer func() { s.Close(); s.Wait() }()
	var wq gvwaiter.Queue
	ep, terr := s.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if terr != nil {
		t.Fatalf("new endpoint: %s", terr)
	}
	defer ep.Close()
	got, err := gonetEndpoint(gonet.NewTCPConn(&wq, ep))
	if err != nil {
		t.Fatal(err)
	}
	if got != ep {
		t.Fatalf("gonetEndpoint = %p, want the endpoint given to NewTCPConn (%p)", got, ep)
	}
	if _, err := gonetEndpoint(nil); !errors.Is(err, errGonetLayout) {
		t.Errorf("gonetEndpoint(nil) = %v", err)
	}
}
