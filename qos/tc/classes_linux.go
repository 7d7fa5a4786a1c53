package tc

import (
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/vishvananda/netlink"

	"github.com/gpumesh/gpumesh/qos"
)

// SetClasses rebuilds the installed tree for another class set, on the
// same link at the same rate, all or nothing: the set is checked first (as
// Install checks it; a Config.Default the caller named must be in it), and
// if the kernel refuses any step, every step already made is undone and
// the old tree, its filters and its routes stay in force.
//
// It makes before it breaks: new classes are added next to the old ones,
// classes that keep their name (and the default class, whichever it is)
// are changed in place and keep their counters, the new DSCP filters and
// the peer routes re-pointed to the new classes go in before the old
// filters go, and only then are the classes that are gone deleted. A route
// naming a class the new set lacks goes to the default class. After Close
// it returns net.ErrClosed.
func (s *Shaper) SetClasses(classes []qos.Class) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.h == nil {
		return fmt.Errorf("tc: set classes: %w", net.ErrClosed)
	}
	cfg := s.cfg
	cfg.Classes = classes
	cfg, err := populate(cfg)
	if err != nil {
		return err
	}
	old := s.report.Classes
	next := plan(cfg, s.minorAllocator())
	rs, err := checkRoutes(s.want, next)
	if err != nil {
		return err
	}

	var undo []func()
	fail := func(err error) error {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		return fmt.Errorf("tc: set classes on %s, old tree kept: %w", s.report.Link, err)
	}
	step := func(name string) error {
		if s.failAt != nil {
			return s.failAt(name)
		}
		return nil
	}

	// 1. Classes: add the new ones, change those that stay in place.
	oldByHandle := make(map[uint32]InstalledClass, len(old))
	for _, c := range old {
		oldByHandle[c.handle] = c
	}
	for _, c := range next {
		o, ok := oldByHandle[c.handle]
		switch {
		case !ok:
			if err := s.addClass(c); err != nil {
				return fail(err)
			}
			undo = append(undo, func() { s.h.ClassDel(s.htbClass(c)) })
		case o.Rate != c.Rate || o.Ceil != c.Ceil || o.Prio != c.Prio:
			if err := s.h.ClassChange(s.htbClass(c)); err != nil {
				return fail(fmt.Errorf("tc: change class %s %s: %w", c.ClassID, c.Name, err))
			}
			undo = append(undo, func() { s.h.ClassChange(s.htbClass(o)) })
		}
	}
	if err := step("classes"); err != nil {
		return fail(err)
	}

	// 2. The new DSCP filters and routes, in the free slots.
	dslot, rslot := 1-s.dscpSlot, 1-s.slot
	if err := s.clearPrios(dscpPrios[dslot]); err != nil { // leftovers of a failed removal
		return fail(err)
	}
	if err := s.addDSCPFilters(dslot, next); err != nil {
		return fail(err)
	}
	undo = append(undo, func() { s.clearPrios(dscpPrios[dslot]) })
	if err := s.addRoutes(rslot, rs); err != nil {
		return fail(err)
	}
	undo = append(undo, func() { s.clearPrios(peerPrios[rslot]) })
	if err := step("filters"); err != nil {
		return fail(err)
	}

	// 3. Break: the old filters go. A failure here may have removed the
	// IPv4 half of a slot: put the old filters back whole.
	if err := s.clearPrios(dscpPrios[s.dscpSlot]); err != nil {
		undo = append(undo, func() { s.clearPrios(dscpPrios[s.dscpSlot]); s.addDSCPFilters(s.dscpSlot, old) })
		return fail(err)
	}
	undo = append(undo, func() { s.addDSCPFilters(s.dscpSlot, old) })
	oldRoutes, _ := checkRoutes(s.want, old)
	if err := s.clearPrios(peerPrios[s.slot]); err != nil {
		undo = append(undo, func() { s.clearPrios(peerPrios[s.slot]); s.addRoutes(s.slot, oldRoutes) })
		return fail(err)
	}
	undo = append(undo, func() { s.addRoutes(s.slot, oldRoutes) })
	if err := step("break"); err != nil {
		return fail(err)
	}

	// In force. The classes that are gone no longer have a filter leading
	// to them; one the kernel will not delete yet is retried next time.
	s.dscpSlot, s.slot, s.routes = dslot, rslot, peerRoutes(rs)
	s.report.Classes = next
	s.cfg.Classes = cfg.Classes
	keep := make(map[uint32]bool, len(next))
	for _, c := range next {
		keep[c.handle] = true
	}
	gone := s.stale
	for _, c := range old {
		if !keep[c.handle] {
			gone = append(gone, c.handle)
		}
	}
	s.stale = nil
	for _, h := range gone {
		if keep[h] {
			continue
		}
		cl := netlink.NewHtbClass(netlink.ClassAttrs{LinkIndex: s.link, Parent: s.parent(), Handle: h}, netlink.HtbClassAttrs{})
		if err := s.h.ClassDel(cl); err != nil && !errors.Is(err, syscall.ENOENT) {
			s.stale = append(s.stale, h)
		}
	}
	return nil
}

// minorAllocator returns the minors plan gives the non-default classes of
// a new set: the minor a class of that name has now, else the lowest one
// no class of the tree uses (nor one that failed to go).
func (s *Shaper) minorAllocator() func(name string) uint16 {
	used := make(map[uint16]bool, len(s.report.Classes)+len(s.stale))
	byName := make(map[string]uint16, len(s.report.Classes))
	for _, c := range s.report.Classes {
		m := uint16(c.handle & 0xffff)
		used[m] = true
		if !c.Default {
			byName[c.Name] = m
		}
	}
	for _, h := range s.stale {
		used[uint16(h&0xffff)] = true
	}
	next := uint16(firstMinor)
	return func(name string) uint16 {
		if m, ok := byName[name]; ok {
			return m
		}
		for used[next] {
			next++
		}
		used[next] = true
		return next
	}
}
