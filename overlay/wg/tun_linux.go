//go:build linux

package wg

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// kernelTUN is a kernel TUN interface and the netlink handle that
// configures it. The handle is opened in the network namespace of the
// thread that calls createKernelTUN and keeps working there from any
// thread, so that Close finds the interface wherever it is called from.
type kernelTUN struct {
	dev     tun.Device
	name    string
	index   int
	h       *netlink.Handle
	removed bool // guarded by the owning Node's mu
}

// createKernelTUN creates the interface name with mtu, with offloads
// (GSO/GRO, batches of packets per read and write) where the kernel has
// them. It refuses to take over an existing interface.
func createKernelTUN(name string, mtu int, offloads bool) (*kernelTUN, error) {
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("tun: netlink: %w", err)
	}
	if _, err := h.LinkByName(name); err == nil {
		h.Close()
		return nil, fmt.Errorf("tun: interface %q already exists", name)
	}
	var dev tun.Device
	if offloads {
		dev, err = tun.CreateTUN(name, mtu)
	} else {
		dev, err = createTUNWithoutOffloads(name, mtu)
	}
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("tun: create %q (needs CAP_NET_ADMIN and /dev/net/tun): %w", name, err)
	}
	k := &kernelTUN{dev: dev, name: name, h: h}
	if real, err := dev.Name(); err == nil {
		k.name = real
	}
	link, err := h.LinkByName(k.name)
	if err != nil {
		dev.Close()
		h.Close()
		return nil, fmt.Errorf("tun: find %q: %w", k.name, err)
	}
	k.index = link.Attrs().Index
	return k, nil
}

// configure adds addrs, sets the MTU, brings the link up and routes
// routes into it. Each route's source is the interface's address of the
// same family, so that host programs use their overlay address.
func (k *kernelTUN) configure(addrs []netip.Prefix, routes []netip.Prefix) error {
	link, err := k.h.LinkByIndex(k.index)
	if err != nil {
		return fmt.Errorf("tun: %s: %w", k.name, err)
	}
	mtu, err := k.dev.MTU()
	if err != nil {
		return fmt.Errorf("tun: %s: mtu: %w", k.name, err)
	}
	if err := k.h.LinkSetMTU(link, mtu); err != nil {
		return fmt.Errorf("tun: %s: set mtu %d: %w", k.name, mtu, err)
	}
	for _, a := range addrs {
		na := &netlink.Addr{IPNet: prefixNet(a)}
		if a.Addr().Is6() {
			na.Flags = unix.IFA_F_NODAD // usable at once
		}
		if err := k.h.AddrReplace(link, na); err != nil {
			return fmt.Errorf("tun: %s: add address %v: %w", k.name, a, err)
		}
	}
	if err := k.h.LinkSetUp(link); err != nil {
		return fmt.Errorf("tun: %s: up: %w", k.name, err)
	}
	for _, r := range routes {
		route := &netlink.Route{LinkIndex: k.index, Dst: prefixNet(r), Scope: netlink.SCOPE_LINK}
		for _, a := range addrs {
			if a.Addr().Is4() == r.Addr().Is4() {
				route.Src = a.Addr().AsSlice()
				break
			}
		}
		if err := k.h.RouteReplace(route); err != nil {
			return fmt.Errorf("tun: %s: route %v: %w", k.name, r, err)
		}
	}
	return nil
}

// remove closes the TUN device, which makes the kernel delete the
// interface with its addresses and routes, and deletes the link itself if
// it is somehow still there. It is safe to call more than once.
func (k *kernelTUN) remove() error {
	if k.removed {
		return nil
	}
	k.removed = true
	k.dev.Close()
	defer k.h.Close()
	link, err := k.h.LinkByIndex(k.index)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
			return nil
		}
		return fmt.Errorf("tun: %s: %w", k.name, err)
	}
	if link.Attrs().Name != k.name {
		return nil // the index is someone else's now
	}
	if err := k.h.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("tun: remove %s: %w", k.name, err)
	}
	return nil
}

// createTUNWithoutOffloads creates a TUN device as a kernel without
// offloads would give it: no virtio-net header, one packet per read.
func createTUNWithoutOffloads(name string, mtu int) (tun.Device, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return tun.CreateTUNFromFile(os.NewFile(uintptr(fd), "/dev/net/tun"), mtu)
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
