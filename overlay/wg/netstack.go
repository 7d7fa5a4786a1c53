package wg

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// stackNet is what Listen and Dial use of ModeNetstack's userspace stack:
// a userStack, or wireguard-go's tun/netstack.Net.
type stackNet interface {
	ListenTCPAddrPort(netip.AddrPort) (*gonet.TCPListener, error)
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// userStack is ModeNetstack's data path: a gVisor TCP/IP stack whose only
// link is the tun.Device wireguard-go reads and writes. It moves packets
// in batches, as a kernel TUN device with offloads does, where
// wireguard-go's tun/netstack moves one per call:
//
//   - the stack's TCP sends segments of up to 64 KiB, which gVisor cuts to
//     the MTU (GSO in gVisor) as it hands them to the link;
//   - Read gives wireguard-go every queued packet, up to its batch, so
//     that it encrypts and sends them together (sendmmsg, UDP GSO);
//   - Write checks the checksums of the batch wireguard-go decrypted and
//     coalesces its TCP segments per flow (GRO) before the stack sees them.
//
// Model: tailscale.com/wgengine/netstack's linkEndpoint.
type userStack struct {
	stack  *stack.Stack
	ep     *linkEndpoint
	mtu    int
	events chan tun.Event
	gros   sync.Pool // *gro.GRO, one per concurrent Write
	once   sync.Once
}

var (
	_ tun.Device = (*userStack)(nil)
	_ stackNet   = (*userStack)(nil)
)

const nicID = 1

// newUserStack creates a stack holding addrs, with an MTU of mtu.
func newUserStack(addrs []netip.Addr, mtu int) (*userStack, error) {
	s := &userStack{
		stack: stack.New(stack.Options{
			NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
			TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
			HandleLocal:        true,
		}),
		ep:     newLinkEndpoint(uint32(mtu)),
		mtu:    mtu,
		events: make(chan tun.Event, 1),
	}
	s.gros.New = func() any {
		g := &gro.GRO{}
		g.Init(true)
		return g
	}
	// As tsnet's netstack: SACK on; RACK off (gVisor's RACK turns the
	// losses that end slow start on a long path into spurious
	// retransmissions and a small window: through e2e/wanlab at 80 ms and
	// 100 Mbit/s, 1.7 MB/s with it, 6.1–6.7 MB/s without; tailscale issue
	// 9707); buffers that grow to 8 MiB (receive) and 6 MiB (send), for
	// long fat paths.
	sack := tcpip.TCPSACKEnabled(true)
	rack := tcpip.TCPRecovery(0)
	for _, opt := range []tcpip.SettableTransportProtocolOption{
		&sack,
		&rack,
		&tcpip.TCPReceiveBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: tcp.DefaultReceiveBufferSize, Max: 8 << 20},
		&tcpip.TCPSendBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: tcp.DefaultSendBufferSize, Max: 6 << 20},
	} {
		if err := s.stack.SetTransportProtocolOption(tcp.ProtocolNumber, opt); err != nil {
			s.stack.Close()
			return nil, fmt.Errorf("netstack: TCP option %T: %v", opt, err)
		}
	}
	if err := s.stack.CreateNIC(nicID, s.ep); err != nil {
		s.stack.Close()
		return nil, fmt.Errorf("netstack: create NIC: %v", err)
	}
	var v4, v6 bool
	for _, a := range addrs {
		proto := tcpip.NetworkProtocolNumber(ipv4.ProtocolNumber)
		if a.Is6() {
			proto = ipv6.ProtocolNumber
		}
		pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: tcpip.AddrFromSlice(a.AsSlice()).WithPrefix()}
		if err := s.stack.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			s.stack.Close()
			return nil, fmt.Errorf("netstack: add address %v: %v", a, err)
		}
		v4, v6 = v4 || a.Is4(), v6 || a.Is6()
	}
	if v4 {
		s.stack.AddRoute(tcpip.Route{Destination: header.IPv4EmptySubnet, NIC: nicID})
	}
	if v6 {
		s.stack.AddRoute(tcpip.Route{Destination: header.IPv6EmptySubnet, NIC: nicID})
	}
	s.events <- tun.EventUp
	return s, nil
}

func (s *userStack) File() *os.File           { return nil }
func (s *userStack) MTU() (int, error)        { return s.mtu, nil }
func (s *userStack) Name() (string, error)    { return "netstack", nil }
func (s *userStack) Events() <-chan tun.Event { return s.events }
func (s *userStack) BatchSize() int           { return conn.IdealBatchSize }

// Read blocks until the stack has a packet to send, then copies it and
// every other packet already queued (up to len(bufs)) into bufs.
func (s *userStack) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	pkt, ok := s.ep.next(true)
	if !ok {
		return 0, os.ErrClosed
	}
	n := 0
	for pkt != nil {
		size, err := copyPacket(bufs[n][offset:], pkt)
		pkt.DecRef()
		if err != nil {
			return n, err
		}
		sizes[n] = size
		n++
		if n == len(bufs) {
			break
		}
		pkt, _ = s.ep.next(false)
	}
	return n, nil
}

// copyPacket copies pkt into dst straight from the views behind it
// (pkt.AsSlices would allocate a slice of them for every packet).
func copyPacket(dst []byte, pkt *stack.PacketBuffer) (int, error) {
	if pkt.Size() > len(dst) {
		return 0, fmt.Errorf("netstack: %d-byte packet for a %d-byte buffer", pkt.Size(), len(dst))
	}
	views, skip := pkt.AsViewList() // skip: the headroom before the packet
	n := 0
	for v := views.Front(); v != nil; v = v.Next() {
		b := v.AsSlice()
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		n += copy(dst[n:], b[skip:])
		skip = 0
	}
	return n, nil
}

// Write hands the stack the packets wireguard-go decrypted. Packets whose
// checksums are wrong are dropped; TCP segments of one flow are coalesced.
func (s *userStack) Write(bufs [][]byte, offset int) (int, error) {
	d := s.ep.dispatcher()
	if d == nil {
		return 0, os.ErrClosed
	}
	g := s.gros.Get().(*gro.GRO)
	g.Dispatcher = d
	for _, b := range bufs {
		pkt := b[offset:]
		proto, ok := checksumsValid(pkt)
		if !ok {
			continue
		}
		pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(pkt)})
		pb.NetworkProtocolNumber = proto
		pb.RXChecksumValidated = true
		g.Enqueue(pb)
		pb.DecRef()
	}
	g.Flush()
	g.Dispatcher = nil
	s.gros.Put(g)
	return len(bufs), nil
}

// Close tears the stack down; a Read blocked on it returns os.ErrClosed.
func (s *userStack) Close() error {
	s.once.Do(func() {
		s.ep.Close()
		s.stack.RemoveNIC(nicID)
		s.stack.Close()
		s.stack.Wait()
		close(s.events)
	})
	return nil
}

// fullAddr converts ap for gVisor, as wireguard-go's tun/netstack does.
func fullAddr(ap netip.AddrPort) (tcpip.FullAddress, tcpip.NetworkProtocolNumber) {
	proto := tcpip.NetworkProtocolNumber(ipv4.ProtocolNumber)
	if ap.Addr().Is6() {
		proto = ipv6.ProtocolNumber
	}
	return tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFromSlice(ap.Addr().AsSlice()), Port: ap.Port()}, proto
}

func (s *userStack) ListenTCPAddrPort(ap netip.AddrPort) (*gonet.TCPListener, error) {
	fa, proto := fullAddr(ap)
	return gonet.ListenTCP(s.stack, fa, proto)
}

// DialContext connects to address ("ip:port") over network (tcp or udp,
// optionally with 4 or 6).
func (s *userStack) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, fmt.Errorf("netstack: dial %s: %w", address, err)
	}
	fa, proto := fullAddr(ap)
	switch network {
	case "tcp", "tcp4", "tcp6":
		return gonet.DialContextTCP(ctx, s.stack, fa, proto)
	case "udp", "udp4", "udp6":
		return s.listenUDP(netip.AddrPort{}, ap)
	}
	return nil, fmt.Errorf("netstack: dial: unsupported network %q", network)
}

// SetTCPOption sets an option of the userspace TCP (ModeNetstack; gVisor)
// for connections opened after it: congestion control, buffer size
// ranges, loss recovery.
func (n *Node) SetTCPOption(opt tcpip.SettableTransportProtocolOption) error {
	tnet, err := n.state()
	if err != nil {
		return err
	}
	s, ok := tnet.(*userStack)
	if !ok {
		return fmt.Errorf("wg: set TCP option: not in %v mode", ModeNetstack)
	}
	if err := s.stack.SetTransportProtocolOption(tcp.ProtocolNumber, opt); err != nil {
		return fmt.Errorf("wg: set TCP option %T: %v", opt, err)
	}
	return nil
}

// linkEndpoint is the stack's link: outbound packets wait in a queue for
// Read; inbound ones go to the dispatcher the stack attached.
type linkEndpoint struct {
	out       chan *stack.PacketBuffer // outbound, for Read
	closed    chan struct{}
	closeOnce sync.Once

	mu   sync.RWMutex
	d    stack.NetworkDispatcher // guarded by mu
	mtu  uint32                  // guarded by mu
	addr tcpip.LinkAddress       // guarded by mu
}

var (
	_ stack.LinkEndpoint = (*linkEndpoint)(nil)
	_ stack.GSOEndpoint  = (*linkEndpoint)(nil)
)

// outQueue is how many outbound packets wait for Read before the stack's
// senders block: two full batches.
const outQueue = 2 * conn.IdealBatchSize

func newLinkEndpoint(mtu uint32) *linkEndpoint {
	return &linkEndpoint{out: make(chan *stack.PacketBuffer, outQueue), closed: make(chan struct{}), mtu: mtu}
}

// next returns the next outbound packet, waiting for one if wait; ok is
// false once the endpoint is closed.
func (ep *linkEndpoint) next(wait bool) (pkt *stack.PacketBuffer, ok bool) {
	if !wait {
		select {
		case pkt = <-ep.out:
			return pkt, true
		default:
			return nil, true
		}
	}
	select {
	case pkt = <-ep.out:
		return pkt, true
	case <-ep.closed:
		return nil, false
	}
}

func (ep *linkEndpoint) dispatcher() stack.NetworkDispatcher {
	ep.mu.RLock()
	defer ep.mu.RUnlock()
	return ep.d
}

// WritePackets queues the stack's outbound packets for Read, blocking
// while the queue is full: the stack's senders slow to wireguard-go's pace
// instead of losing packets.
func (ep *linkEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	for _, pkt := range pkts.AsSlice() {
		select {
		case ep.out <- pkt.IncRef():
			n++
		case <-ep.closed:
			pkt.DecRef()
			if n == 0 {
				return 0, &tcpip.ErrClosedForSend{}
			}
			return n, nil
		}
	}
	return n, nil
}

// Close stops the queue and drops what waits in it. It may be called more
// than once.
func (ep *linkEndpoint) Close() {
	ep.closeOnce.Do(func() {
		ep.mu.Lock()
		ep.d = nil
		ep.mu.Unlock()
		close(ep.closed)
		for {
			select {
			case pkt := <-ep.out:
				pkt.DecRef()
			default:
				return
			}
		}
	})
}

func (ep *linkEndpoint) Attach(d stack.NetworkDispatcher) {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	ep.d = d
}

func (ep *linkEndpoint) IsAttached() bool { return ep.dispatcher() != nil }

func (ep *linkEndpoint) MTU() uint32 {
	ep.mu.RLock()
	defer ep.mu.RUnlock()
	return ep.mtu
}

func (ep *linkEndpoint) SetMTU(mtu uint32) {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	ep.mtu = mtu
}

func (ep *linkEndpoint) LinkAddress() tcpip.LinkAddress {
	ep.mu.RLock()
	defer ep.mu.RUnlock()
	return ep.addr
}

func (ep *linkEndpoint) SetLinkAddress(a tcpip.LinkAddress) {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	ep.addr = a
}

// Capabilities: Write has checked every inbound checksum gVisor would.
func (*linkEndpoint) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityRXChecksumOffload
}

// GSOMaxSize and SupportedGSO let the stack's TCP send 64 KiB segments,
// which gVisor itself cuts to the MTU.
func (*linkEndpoint) GSOMaxSize() uint32                      { return 1<<16 - 1 }
func (*linkEndpoint) SupportedGSO() stack.SupportedGSO        { return stack.GVisorGSOSupported }
func (*linkEndpoint) MaxHeaderLength() uint16                 { return 0 }
func (*linkEndpoint) Wait()                                   {}
func (*linkEndpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }
func (*linkEndpoint) AddHeader(*stack.PacketBuffer)           {}
func (*linkEndpoint) ParseHeader(*stack.PacketBuffer) bool    { return true }
func (*linkEndpoint) SetOnCloseAction(func())                 {}
