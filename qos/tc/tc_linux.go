//go:build linux

package tc

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/gpumesh/gpumesh/dscp"
)

// Install probes the kernel and installs the HTB tree described by cfg on
// cfg.Link. Without CAP_NET_ADMIN it returns ErrNoPrivilege. A half-built
// tree is removed before Install returns an error.
func Install(cfg Config) (*Shaper, error) {
	if !hasPrivilege() {
		return nil, ErrNoPrivilege
	}
	full, err := populate(cfg)
	if err != nil {
		return nil, err
	}
	h, err := newHandle(cfg.Netns)
	if err != nil {
		return nil, fmt.Errorf("tc: install on %s: %w", cfg.Link, err)
	}
	s, err := install(h, full)
	if err != nil {
		h.Close()
		return nil, err
	}
	s.cfg.Default = cfg.Default // SetClasses picks the default again by the caller's rule
	return s, nil
}

func install(h *netlink.Handle, cfg Config) (_ *Shaper, err error) {
	link, err := h.LinkByName(cfg.Link)
	if err != nil {
		return nil, fmt.Errorf("tc: link %s: %w", cfg.Link, err)
	}
	idx := link.Attrs().Index
	report := Report{Link: cfg.Link, Rate: cfg.Rate, Root: fmt.Sprintf("%x:", cfg.Major), Leaf: "pfifo"}

	if sup, perr := probe(h); perr == nil {
		report.Support = sup
		if !sup.Has("htb") || !sup.Has("u32") {
			return nil, fmt.Errorf("tc: %s: %w", sup, ErrUnsupported)
		}
		switch {
		case sup.Has("fq_codel"):
			report.Leaf = "fq_codel"
		case sup.Has("sfq"):
			report.Leaf = "sfq"
		}
	} else if errors.Is(perr, ErrNoPrivilege) {
		return nil, perr
	} // else: no throwaway veth here; installing tells us soon enough

	qdiscs, err := h.QdiscList(link)
	if err != nil {
		return nil, fmt.Errorf("tc: list qdiscs on %s: %w", cfg.Link, privErr(err))
	}
	for _, q := range qdiscs {
		if a := q.Attrs(); a.Parent == netlink.HANDLE_ROOT {
			report.Replaced = q.Type()
			if a.Handle != 0 && !cfg.Replace {
				return nil, fmt.Errorf("tc: %s has root qdisc %s %s: %w", cfg.Link, q.Type(), netlink.HandleStr(a.Handle), ErrBusy)
			}
		}
	}

	root := netlink.MakeHandle(cfg.Major, 0)
	htb := netlink.NewHtb(netlink.QdiscAttrs{LinkIndex: idx, Parent: netlink.HANDLE_ROOT, Handle: root})
	htb.Defcls = defaultMinor
	if err := h.QdiscReplace(htb); err != nil {
		return nil, fmt.Errorf("tc: add htb root on %s: %w", cfg.Link, privErr(err))
	}
	s := &Shaper{cfg: cfg, link: idx, root: root, h: h}
	defer func() {
		if err != nil {
			h.QdiscDel(htb) // undo the half-built tree
		}
	}()

	top := netlink.NewHtbClass(netlink.ClassAttrs{LinkIndex: idx, Parent: root, Handle: s.parent()},
		netlink.HtbClassAttrs{Rate: bits(cfg.Rate), Ceil: bits(cfg.Rate)})
	if err := h.ClassAdd(top); err != nil {
		return nil, fmt.Errorf("tc: add root class: %w", err)
	}
	report.Classes = plan(cfg, nil)
	s.report = report
	for _, c := range report.Classes {
		if err := s.addClass(c); err != nil {
			return nil, err
		}
	}
	if err := s.addDSCPFilters(s.dscpSlot, report.Classes); err != nil {
		return nil, err
	}
	return s, nil
}

func bits(bytes int64) uint64 { return uint64(bytes) * 8 }

// parent is the handle of the root class, every class's parent.
func (s *Shaper) parent() uint32 { return netlink.MakeHandle(s.cfg.Major, rootMinor) }

// htbClass is c as the kernel's HTB class.
func (s *Shaper) htbClass(c InstalledClass) *netlink.HtbClass {
	return netlink.NewHtbClass(netlink.ClassAttrs{LinkIndex: s.link, Parent: s.parent(), Handle: c.handle},
		netlink.HtbClassAttrs{Rate: bits(c.Rate), Ceil: bits(c.Ceil), Prio: c.Prio})
}

// addClass adds c and its leaf qdisc. s.mu is held, or s is not shared yet.
func (s *Shaper) addClass(c InstalledClass) error {
	if err := s.h.ClassAdd(s.htbClass(c)); err != nil {
		return fmt.Errorf("tc: add class %s %s: %w", c.ClassID, c.Name, err)
	}
	if s.report.Leaf == "pfifo" {
		return nil
	}
	leaf := &netlink.GenericQdisc{QdiscType: s.report.Leaf, QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: s.link, Parent: c.handle, Handle: leafHandle(s.cfg.Major, c.handle)}}
	if err := s.h.QdiscAdd(leaf); err != nil {
		s.h.ClassDel(s.htbClass(c))
		return fmt.Errorf("tc: add %s under %s: %w", s.report.Leaf, c.ClassID, err)
	}
	return nil
}

// leafHandle is the handle of the leaf qdisc under class: a major of its
// own per class minor.
func leafHandle(major uint16, class uint32) uint32 {
	return netlink.MakeHandle(major+1+uint16(class&0xffff-defaultMinor), 0)
}

// addDSCPFilters adds the DSCP filters of classes at the slot's
// priorities; on error it removes those it added. s.mu is held.
func (s *Shaper) addDSCPFilters(slot int, classes []InstalledClass) error {
	for _, c := range classes {
		if !c.Filtered {
			continue
		}
		for _, f := range dscpFilters(s.link, s.root, c.handle, c.DSCP, dscpPrios[slot]) {
			if err := s.h.FilterAdd(f); err != nil {
				s.clearPrios(dscpPrios[slot])
				return fmt.Errorf("tc: add u32 filter dscp %s -> %s: %w", c.DSCP, c.ClassID, err)
			}
		}
	}
	return nil
}

// dscpFilters returns u32 filters sending IPv4 and IPv6 packets with the
// code point (ECN bits ignored) to class, at prios (IPv4, IPv6), which
// come after the peer routes'.
func dscpFilters(link int, parent, class uint32, code dscp.Code, prios [2]uint16) []netlink.Filter {
	mk := func(proto uint16, prio uint16, key netlink.TcU32Key) netlink.Filter {
		return &netlink.U32{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: link, Parent: parent, Priority: prio, Protocol: proto},
			ClassId:     class,
			Sel:         &netlink.TcU32Sel{Flags: netlink.TC_U32_TERMINAL, Keys: []netlink.TcU32Key{key}},
		}
	}
	v := uint32(code.Value())
	return []netlink.Filter{
		// IPv4: the TOS byte is the second byte of the header.
		mk(ethIPv4, prios[0], netlink.TcU32Key{Off: 0, Mask: 0x00fc0000, Val: v << 18}),
		// IPv6: the traffic class straddles the first two bytes.
		mk(ethIPv6, prios[1], netlink.TcU32Key{Off: 0, Mask: 0x0fc00000, Val: v << 22}),
	}
}

// Report returns what is installed now.
func (s *Shaper) Report() Report {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.report
	r.Classes = slices.Clone(r.Classes)
	return r
}

// Stats reads the kernel's counters of the installed classes.
func (s *Shaper) Stats() ([]ClassStats, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.h == nil {
		return nil, fmt.Errorf("tc: stats: %w", net.ErrClosed)
	}
	list, err := s.h.ClassList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: s.link}}, s.root)
	if err != nil {
		return nil, fmt.Errorf("tc: list classes: %w", err)
	}
	byHandle := make(map[uint32]*netlink.ClassStatistics, len(list))
	for _, c := range list {
		byHandle[c.Attrs().Handle] = c.Attrs().Statistics
	}
	out := make([]ClassStats, 0, len(s.report.Classes))
	for _, c := range s.report.Classes {
		cs := ClassStats{Name: c.Name, ClassID: c.ClassID}
		if st := byHandle[c.handle]; st != nil {
			if st.Basic != nil {
				cs.Bytes, cs.Packets = st.Basic.Bytes, st.Basic.Packets
			}
			if st.Queue != nil {
				cs.Drops, cs.Overlimits, cs.Backlog = st.Queue.Drops, st.Queue.Overlimits, st.Queue.Backlog
			}
		}
		out = append(out, cs)
	}
	return out, nil
}

// Close deletes the HTB tree, restoring the link's default qdisc. A second
// Close returns net.ErrClosed.
func (s *Shaper) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.h == nil {
		return net.ErrClosed
	}
	h := s.h
	s.h, s.routes = nil, nil // deleting the root qdisc deletes its filters
	defer h.Close()
	q := netlink.NewHtb(netlink.QdiscAttrs{LinkIndex: s.link, Parent: netlink.HANDLE_ROOT, Handle: s.root})
	if err := h.QdiscDel(q); err != nil && !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("tc: remove htb from %s: %w", s.report.Link, err)
	}
	return nil
}

// newHandle opens a netlink handle in the namespace at path ("" = current).
func newHandle(path string) (*netlink.Handle, error) {
	if path == "" {
		h, err := netlink.NewHandle()
		if err != nil {
			return nil, fmt.Errorf("netlink: %w", privErr(err))
		}
		return h, nil
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", path, privErr(err))
	}
	return h, nil
}

// privErr turns a permission error into ErrNoPrivilege, keeping the cause.
func privErr(err error) error {
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
		return fmt.Errorf("%w: %w", ErrNoPrivilege, err)
	}
	return err
}
