//go:build linux

package wg

import (
	"fmt"
	"sync"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/gpumesh/gpumesh/dscp"
)

// dscpBind is a conn.Bind whose UDP sockets carry a DSCP in the outer IP
// header. conn.StdNetBind has no hook into its socket creation, so after
// Open it finds the sockets Open created — UDP sockets that did not exist
// before and are bound to the port Open returned — and marks them with
// dscp.MarkUDPPort, which keeps their ECN bits. A socket option lives on
// the socket, so every datagram sent from it, GSO segments included,
// carries the mark.
type dscpBind struct {
	conn.Bind
	code dscp.Code
	logf func(string, ...any)
}

// openMu serialises Opens of all dscpBinds in the process, so that two
// binds opening the same port in different network namespaces at once
// cannot take each other's sockets.
var openMu sync.Mutex

func newDSCPBind(inner conn.Bind, code dscp.Code, logf func(string, ...any)) conn.Bind {
	return &dscpBind{Bind: inner, code: code, logf: logf}
}

func (b *dscpBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	openMu.Lock()
	defer openMu.Unlock()
	before, err := dscp.Sockets()
	if err != nil {
		return nil, 0, fmt.Errorf("wg: dscp: %w", err)
	}
	fns, actual, err := b.Bind.Open(port)
	if err != nil {
		return fns, actual, err
	}
	n, err := dscp.MarkUDPPort(actual, b.code, before)
	if err == nil && n == 0 {
		err = fmt.Errorf("no socket found on port %d", actual)
	}
	if err != nil {
		b.Bind.Close()
		return nil, 0, fmt.Errorf("wg: dscp: mark UDP port %d: %w", actual, err)
	}
	b.logf("wg: outer DSCP %s on %d socket(s), UDP port %d", b.code, n, actual)
	return fns, actual, nil
}
