package wg

import (
	"fmt"
	"net"
	"net/netip"

	"golang.zx2c4.com/wireguard/tun/netstack"
)

// ListenPacket listens for UDP ("udp", "udp4", "udp6") on one of the
// node's overlay addresses: addr is "overlay-ip:port" or ":port" (the
// node's first address of the network's family).
func (n *Node) ListenPacket(network, addr string) (net.PacketConn, error) {
	tnet, err := n.state()
	if err != nil {
		return nil, err
	}
	addrs, port, err := n.listenAddrs(network, addr, "udp")
	if err != nil {
		return nil, fmt.Errorf("wg: listen %s %s: %w", network, addr, err)
	}
	ap := netip.AddrPortFrom(addrs[0], port)
	var pc net.PacketConn
	switch t := tnet.(type) {
	case *userStack:
		pc, err = t.listenUDP(ap, netip.AddrPort{})
	case *netstack.Net:
		pc, err = t.ListenUDPAddrPort(ap)
	default: // ModeTUN: the kernel's
		pc, err = net.ListenUDP(network, net.UDPAddrFromAddrPort(ap))
	}
	if err != nil {
		return nil, fmt.Errorf("wg: listen %s %s: %w", network, addr, err)
	}
	return pc, nil
}
