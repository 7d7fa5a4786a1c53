//go:build linux

package tc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"syscall"

	"github.com/vishvananda/netlink"
)

const protoUDP = 17

// Route replaces the shaper's per-peer filters with routes. They take
// precedence over the DSCP filters. A route naming a class the tree does
// not have goes to the default class; SetClasses re-points the routes
// when the classes change. An empty list removes them all. Safe for
// concurrent use with Stats; after Close it returns net.ErrClosed.
//
// The new filters go in before the old ones go, so no packet to a peer in
// both lists escapes its route meanwhile. An error removing the old
// filters is returned with the new routes in place; the next Route retries.
func (s *Shaper) Route(routes []PeerRoute) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.h == nil {
		return fmt.Errorf("tc: route: %w", net.ErrClosed)
	}
	rs, err := checkRoutes(routes, s.report.Classes)
	if err != nil {
		return err
	}
	next := 1 - s.slot
	if err := s.addRoutes(next, rs); err != nil {
		return err
	}
	old := s.slot
	s.slot, s.want, s.routes = next, slices.Clone(routes), peerRoutes(rs)
	return s.clearPrios(peerPrios[old])
}

// addRoutes installs rs in the route slot, after clearing what a failed
// removal left there; on error it removes what it added. s.mu is held.
func (s *Shaper) addRoutes(slot int, rs []route) error {
	if err := s.clearPrios(peerPrios[slot]); err != nil {
		return err
	}
	for _, f := range peerFilters(s.link, s.root, peerPrios[slot], rs) {
		if err := s.h.FilterAdd(f); err != nil {
			s.clearPrios(peerPrios[slot])
			u := f.(*netlink.U32)
			return fmt.Errorf("tc: add u32 filter prio %d -> %s: %w", u.Priority, netlink.HandleStr(u.ClassId), err)
		}
	}
	return nil
}

func peerRoutes(rs []route) []PeerRoute {
	out := make([]PeerRoute, len(rs))
	for i, r := range rs {
		out[i] = r.PeerRoute
	}
	return out
}

// clearPrios deletes every filter at the (IPv4, IPv6) priorities. s.mu is
// held.
func (s *Shaper) clearPrios(prios [2]uint16) error {
	for i, proto := range []uint16{ethIPv4, ethIPv6} {
		f := &netlink.U32{FilterAttrs: netlink.FilterAttrs{
			LinkIndex: s.link, Parent: s.root, Priority: prios[i], Protocol: proto}}
		if err := s.h.FilterDel(f); err != nil && !errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("tc: delete u32 filters prio %d on %s: %w", f.Priority, s.report.Link, err)
		}
	}
	return nil
}

// peerFilters returns u32 filters on parent sending the UDP packets to
// each route's address to its class: IPv4 at prios[0], IPv6 at prios[1].
func peerFilters(link int, parent uint32, prios [2]uint16, routes []route) []netlink.Filter {
	out := make([]netlink.Filter, 0, len(routes))
	for _, r := range routes {
		proto, prio := uint16(ethIPv4), prios[0]
		if r.Addr.Addr().Is6() {
			proto, prio = ethIPv6, prios[1]
		}
		out = append(out, &netlink.U32{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: link, Parent: parent, Priority: prio, Protocol: proto},
			ClassId:     r.class,
			Sel:         &netlink.TcU32Sel{Flags: netlink.TC_U32_TERMINAL, Keys: peerKeys(r.Addr)},
		})
	}
	return out
}

// peerKeys returns the u32 keys matching UDP packets to a, most selective
// first. u32 reads 32-bit words at byte offsets from the network header;
// the UDP ports are the word after the IP header, destination low.
func peerKeys(a netip.AddrPort) []netlink.TcU32Key {
	ip := a.Addr().AsSlice()
	word := func(i int) uint32 { return binary.BigEndian.Uint32(ip[i:]) }
	port := netlink.TcU32Key{Mask: 0x0000ffff, Val: uint32(a.Port())}
	if len(ip) == 4 {
		port.Off = 20
		return []netlink.TcU32Key{
			{Off: 16, Mask: 0xffffffff, Val: word(0)}, // destination address
			port,
			{Off: 8, Mask: 0x00ff0000, Val: protoUDP << 16}, // protocol
			{Off: 0, Mask: 0x0f000000, Val: 5 << 24},        // IHL 5: no options
			{Off: 4, Mask: 0x00001fff, Val: 0},              // fragment offset 0
		}
	}
	port.Off = 40
	return []netlink.TcU32Key{
		{Off: 24, Mask: 0xffffffff, Val: word(0)}, // destination address
		{Off: 28, Mask: 0xffffffff, Val: word(4)},
		{Off: 32, Mask: 0xffffffff, Val: word(8)},
		{Off: 36, Mask: 0xffffffff, Val: word(12)},
		port,
		{Off: 4, Mask: 0x0000ff00, Val: protoUDP << 8}, // next header
	}
}
