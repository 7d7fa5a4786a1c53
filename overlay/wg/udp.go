package wg

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// udpConn is gonet's UDPConn with a WriteTo that cannot miss its wakeup.
// gonet's registers for the endpoint's "writable" event only after a
// write has found the send buffer full; when every packet in flight is
// released in between, nothing wakes it again (a QUIC sender over this
// netstack hung so at 1 Gbit/s). This one registers and then tries again
// before it waits, as gonet's TCPConn.Write does.
type udpConn struct {
	*gonet.UDPConn
	ep tcpip.Endpoint
	wq *waiter.Queue

	mu       sync.Mutex
	deadline time.Time // for writes; guarded by mu
}

// listenUDP opens a UDP endpoint bound to laddr and, if raddr is valid,
// connected to it.
func (s *userStack) listenUDP(laddr, raddr netip.AddrPort) (*udpConn, error) {
	ap := laddr
	if !ap.IsValid() {
		ap = raddr
	}
	_, proto := fullAddr(ap)
	wq := new(waiter.Queue)
	ep, terr := s.stack.NewEndpoint(udp.ProtocolNumber, proto, wq)
	if terr != nil {
		return nil, fmt.Errorf("netstack: udp endpoint: %v", terr)
	}
	if laddr.IsValid() {
		fa, _ := fullAddr(laddr)
		if terr := ep.Bind(fa); terr != nil {
			ep.Close()
			return nil, fmt.Errorf("netstack: bind udp %v: %v", laddr, terr)
		}
	}
	if raddr.IsValid() {
		fa, _ := fullAddr(raddr)
		if terr := ep.Connect(fa); terr != nil {
			ep.Close()
			return nil, fmt.Errorf("netstack: connect udp %v: %v", raddr, terr)
		}
	}
	return &udpConn{UDPConn: gonet.NewUDPConn(wq, ep), ep: ep, wq: wq}, nil
}

func (c *udpConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return c.UDPConn.SetWriteDeadline(t)
}

func (c *udpConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return c.UDPConn.SetDeadline(t)
}

func (c *udpConn) Write(b []byte) (int, error) { return c.WriteTo(b, nil) }

// WriteTo sends b to addr (nil: the connected address), waiting while the
// endpoint's send buffer is full, until the write deadline.
func (c *udpConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	var opts tcpip.WriteOptions
	if addr != nil {
		ua, ok := addr.(*net.UDPAddr)
		if !ok {
			return 0, &net.OpError{Op: "write", Net: "udp", Addr: addr, Err: fmt.Errorf("not a *net.UDPAddr: %T", addr)}
		}
		fa, _ := fullAddr(netip.AddrPortFrom(ua.AddrPort().Addr().Unmap(), uint16(ua.Port)))
		fa.NIC = 0
		opts.To = &fa
	}
	var ch <-chan struct{}
	var expired <-chan time.Time
	for {
		var r bytes.Reader
		r.Reset(b)
		n, err := c.ep.Write(&r, opts)
		if _, full := err.(*tcpip.ErrWouldBlock); !full {
			if err != nil {
				return int(n), &net.OpError{Op: "write", Net: "udp", Addr: addr, Err: errors.New(err.String())}
			}
			return int(n), nil
		}
		if ch == nil {
			var entry waiter.Entry
			entry, ch = waiter.NewChannelEntry(waiter.WritableEvents)
			c.wq.EventRegister(&entry)
			defer c.wq.EventUnregister(&entry)
			c.mu.Lock()
			d := c.deadline
			c.mu.Unlock()
			if !d.IsZero() {
				t := time.NewTimer(time.Until(d))
				defer t.Stop()
				expired = t.C
			}
			continue // the buffer may have drained before the registration
		}
		select {
		case <-ch:
		case <-expired:
			return 0, &net.OpError{Op: "write", Net: "udp", Addr: addr, Err: os.ErrDeadlineExceeded}
		}
	}
}
