package tc

import (
	"fmt"
	"net/netip"
	"slices"
)

// Filter priorities on the root qdisc. The kernel tries filters in
// increasing priority, so peer routes beat the DSCP filters. Peer routes
// and DSCP filters each alternate between two slots: Route and SetClasses
// install the new set in the free slot before they delete the old one, so
// a packet meets either the old filters or the new, never none.
//
// peerPrios are the route slots' (IPv4, IPv6) filter priorities,
// dscpPrios the DSCP filter slots'.
var (
	peerPrios = [2][2]uint16{{3, 4}, {5, 6}}
	dscpPrios = [2][2]uint16{{10, 11}, {12, 13}}
)

// maxRoutes bounds the routes per address family, well inside the 4095
// filters u32 numbers in one priority's hash table (and u32 tries them one
// by one: use few).
const maxRoutes = 2048

// PeerRoute sends the UDP packets to Addr (a peer's WireGuard endpoint) to
// the named class; a class the tree lacks means its default class.
//
// The match assumes what WireGuard sends: UDP right after an IPv4 header
// without options, or after an IPv6 header without extension headers.
// Other packets to Addr, and non-first fragments, fall through to the DSCP
// filters.
type PeerRoute struct {
	Addr  netip.AddrPort
	Class string
}

func (r PeerRoute) String() string { return r.Addr.String() + " -> " + r.Class }

// route is a checked PeerRoute with its class's HTB handle.
type route struct {
	PeerRoute
	class uint32
}

// checkRoutes validates routes against the tree's classes, sending a route
// to a class the tree lacks to its default class. It returns them sorted by
// address, IPv4-mapped addresses unmapped, duplicates dropped.
func checkRoutes(routes []PeerRoute, classes []InstalledClass) ([]route, error) {
	handles := make(map[string]uint32, len(classes))
	var def InstalledClass
	for _, c := range classes {
		handles[c.Name] = c.handle
		if c.Default {
			def = c
		}
	}
	out := make([]route, 0, len(routes))
	var n4, n6 int
	for _, r := range routes {
		h, ok := handles[r.Class]
		if !ok {
			r.Class, h = def.Name, def.handle
		}
		if !r.Addr.IsValid() || r.Addr.Port() == 0 || r.Addr.Addr().Zone() != "" {
			return nil, fmt.Errorf("tc: route %s: address %q: %w", r.Class, r.Addr, ErrInvalidConfig)
		}
		r.Addr = netip.AddrPortFrom(r.Addr.Addr().Unmap(), r.Addr.Port())
		if r.Addr.Addr().Is4() {
			n4++
		} else {
			n6++
		}
		out = append(out, route{r, h})
	}
	if n4 > maxRoutes || n6 > maxRoutes {
		return nil, fmt.Errorf("tc: %d IPv4 and %d IPv6 routes, at most %d each: %w", n4, n6, maxRoutes, ErrInvalidConfig)
	}
	slices.SortStableFunc(out, func(a, b route) int { return a.Addr.Compare(b.Addr) })
	for i := 1; i < len(out); i++ {
		if a, b := out[i-1], out[i]; a.Addr == b.Addr && a.Class != b.Class {
			return nil, fmt.Errorf("tc: route %s: classes %q and %q: %w", a.Addr, a.Class, b.Class, ErrInvalidConfig)
		}
	}
	return slices.CompactFunc(out, func(a, b route) bool { return a.Addr == b.Addr }), nil
}

// Routes returns the installed peer routes, sorted by address, each with
// the class it leads to (the default class for a class the tree lacks);
// nil after Close.
func (s *Shaper) Routes() []PeerRoute {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.routes)
}
