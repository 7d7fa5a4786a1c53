//go:build !linux

package wg

import (
	"errors"
	"net/netip"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/gpumesh/gpumesh/dscp"
)

type kernelTUN struct {
	dev  tun.Device
	name string
}

func createKernelTUN(string, int, bool) (*kernelTUN, error) {
	return nil, errors.New("tun: kernel TUN mode needs Linux")
}

func (k *kernelTUN) configure(_, _ []netip.Prefix) error { return errors.ErrUnsupported }
func (k *kernelTUN) remove() error                       { return nil }

func newDSCPBind(inner conn.Bind, _ dscp.Code, _ func(string, ...any)) conn.Bind {
	return errBind{inner}
}

// errBind refuses to open: outer DSCP is implemented on Linux only.
type errBind struct{ conn.Bind }

func (errBind) Open(uint16) ([]conn.ReceiveFunc, uint16, error) {
	return nil, 0, errors.New("wg: outer DSCP needs Linux")
}
