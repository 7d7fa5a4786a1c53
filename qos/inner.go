package qos

import (
	"errors"
	"fmt"
	"net"
	"reflect"
	"syscall"
	"unsafe"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"

	"github.com/gpumesh/gpumesh/dscp"
)

// ErrNoInnerDSCP reports a connection whose packets SetConnDSCP cannot
// mark: its type offers no way to reach the TOS byte of what it sends (a
// net.Pipe, a Unix socket, a wrapper that hides what it wraps). Callers
// log it once and carry on unmarked.
var ErrNoInnerDSCP = errors.New("no inner dscp for this connection")

// SetConnDSCP sets the DSCP of the packets c sends from now on, keeping the
// ECN bits as the stack manages them. These are the overlay's inner
// packets, the ones inside the tunnel; a Marker marks the outer ones.
//
// It first unwraps connections that expose the one they wrap with a
// NetConn method (as *tls.Conn does), then handles:
//   - kernel sockets (syscall.Conn, such as *net.TCPConn over a TUN):
//     IP_TOS on IPv4 sockets, IPV6_TCLASS and IP_TOS on IPv6 ones, as
//     dscp.Mark does;
//   - gVisor netstack connections (*gonet.TCPConn, from tsnet or a
//     netstack WireGuard): the endpoint's IPv4 TOS or IPv6 traffic class
//     option, chosen by the local address.
//
// Anything else yields an error wrapping ErrNoInnerDSCP that names c's
// type.
func SetConnDSCP(c net.Conn, code dscp.Code) error {
	if !code.Valid() {
		return fmt.Errorf("qos: set conn dscp %v: %w", code, dscp.ErrBad)
	}
	c = unwrapConn(c)
	var err error
	switch c := c.(type) {
	case *gonet.TCPConn:
		err = setNetstackDSCP(c, code)
	case syscall.Conn:
		err = setSocketDSCP(c, code)
	default:
		err = ErrNoInnerDSCP
	}
	if err != nil {
		return fmt.Errorf("qos: set conn dscp %v on %T: %w", code, c, err)
	}
	return nil
}

// netConner is a connection that wraps another and says which
// (*tls.Conn, for one).
type netConner interface {
	NetConn() net.Conn
}

// unwrapConn follows NetConn to the innermost connection. It stops at a
// nil result and, as a guard against a wrapper returning itself, after a
// bounded number of steps.
func unwrapConn(c net.Conn) net.Conn {
	for range 32 {
		w, ok := c.(netConner)
		if !ok {
			return c
		}
		inner := w.NetConn()
		if inner == nil || inner == c {
			return c
		}
		c = inner
	}
	return c
}

// setNetstackDSCP sets the DSCP on a netstack connection's endpoint.
// gVisor's TCP endpoint keeps one TOS byte for both families and clears its
// ECN bits itself (it does no ECN); the old ECN bits are kept all the same,
// in case a later version manages them.
func setNetstackDSCP(c *gonet.TCPConn, code dscp.Code) error {
	ep, err := gonetEndpoint(c)
	if err != nil {
		return err
	}
	opt := tcpip.IPv6TrafficClassOption
	if a, ok := c.LocalAddr().(*net.TCPAddr); ok && a.IP.To4() != nil {
		opt = tcpip.IPv4TOSOption
	}
	old, terr := ep.GetSockOptInt(opt)
	if terr != nil {
		return fmt.Errorf("netstack get tos: %s", terr)
	}
	if terr := ep.SetSockOptInt(opt, int(code.TOS(byte(old)))); terr != nil {
		return fmt.Errorf("netstack set tos: %s", terr)
	}
	return nil
}

// errGonetLayout reports that gonet.TCPConn no longer has the field
// gonetEndpoint reads; TestGonetLayout fails on it after a gVisor upgrade.
var errGonetLayout = errors.New("gonet.TCPConn has no field ep of type tcpip.Endpoint (gvisor layout changed)")

// gonetEndpoint returns the tcpip.Endpoint behind a gonet.TCPConn.
//
// gonet keeps it in the unexported field ep and offers no accessor, nor
// any way to set the TOS, and tsnet and netstack WireGuard hand out the
// *gonet.TCPConn only. So the field is read through reflect and unsafe:
// reflect finds it by name and checks its type (so a renamed, removed or
// retyped field gives errGonetLayout rather than a bad read), and unsafe
// turns its address into a *tcpip.Endpoint, since reflect refuses to hand
// out unexported fields' values. The field is set by gonet.NewTCPConn and
// never written again, so reading it races with nothing.
func gonetEndpoint(c *gonet.TCPConn) (tcpip.Endpoint, error) {
	if c == nil {
		return nil, errGonetLayout
	}
	f := reflect.ValueOf(c).Elem().FieldByName("ep")
	if !f.IsValid() || f.Type() != reflect.TypeFor[tcpip.Endpoint]() {
		return nil, errGonetLayout
	}
	ep := *(*tcpip.Endpoint)(unsafe.Pointer(f.UnsafeAddr()))
	if ep == nil {
		return nil, errors.New("gonet.TCPConn has a nil endpoint")
	}
	return ep, nil
}
