//go:build linux

package tc

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"syscall"

	"github.com/vishvananda/netlink"
)

// probeQdiscs are tried as the root qdisc of a throwaway veth.
var probeQdiscs = []func(attrs netlink.QdiscAttrs) netlink.Qdisc{
	func(a netlink.QdiscAttrs) netlink.Qdisc { return netlink.NewHtb(a) },
	func(a netlink.QdiscAttrs) netlink.Qdisc {
		return &netlink.Tbf{QdiscAttrs: a, Rate: 125000, Limit: 10000, Buffer: 100000}
	},
	func(a netlink.QdiscAttrs) netlink.Qdisc {
		return &netlink.GenericQdisc{QdiscAttrs: a, QdiscType: "pfifo"}
	},
	func(a netlink.QdiscAttrs) netlink.Qdisc { return netlink.NewPrio(a) },
	func(a netlink.QdiscAttrs) netlink.Qdisc { return netlink.NewFq(a) },
	func(a netlink.QdiscAttrs) netlink.Qdisc { return netlink.NewFqCodel(a) },
	func(a netlink.QdiscAttrs) netlink.Qdisc {
		return &netlink.GenericQdisc{QdiscAttrs: a, QdiscType: "sfq"}
	},
	func(a netlink.QdiscAttrs) netlink.Qdisc {
		return &netlink.GenericQdisc{QdiscAttrs: a, QdiscType: "cake"}
	},
	func(a netlink.QdiscAttrs) netlink.Qdisc { return netlink.NewNetem(a, netlink.NetemQdiscAttrs{}) },
	func(a netlink.QdiscAttrs) netlink.Qdisc {
		a.Parent, a.Handle = netlink.HANDLE_CLSACT, netlink.MakeHandle(0xffff, 0)
		return &netlink.GenericQdisc{QdiscAttrs: a, QdiscType: "clsact"}
	},
}

// probeFilters are tried on an HTB root of the throwaway veth.
var probeFilters = []func(attrs netlink.FilterAttrs) netlink.Filter{
	func(a netlink.FilterAttrs) netlink.Filter { return &netlink.U32{FilterAttrs: a} },
	// No program (loading one needs CAP_BPF): a kernel with cls_bpf
	// rejects the request (EINVAL, EBADF), one without it answers ENOENT.
	func(a netlink.FilterAttrs) netlink.Filter {
		return &netlink.BpfFilter{FilterAttrs: a, Fd: -1, Name: "gmq-probe", DirectAction: true}
	},
	func(a netlink.FilterAttrs) netlink.Filter {
		return &netlink.Flower{FilterAttrs: a, EthType: ethIPv4}
	},
	func(a netlink.FilterAttrs) netlink.Filter { return &netlink.MatchAll{FilterAttrs: a} },
	func(a netlink.FilterAttrs) netlink.Filter { return &netlink.FwFilter{FilterAttrs: a} },
}

// Probe creates a throwaway veth pair, tries each qdisc and filter kind
// on it, and deletes it. Without CAP_NET_ADMIN it returns ErrNoPrivilege.
func Probe(cfg ProbeConfig) (Support, error) {
	if !hasPrivilege() {
		return nil, ErrNoPrivilege
	}
	h, err := newHandle(cfg.Netns)
	if err != nil {
		return nil, fmt.Errorf("tc: probe: %w", err)
	}
	defer h.Close()
	return probe(h)
}

func probe(h *netlink.Handle) (Support, error) {
	var rnd [4]byte
	rand.Read(rnd[:])
	name := "gmqp" + hex.EncodeToString(rnd[:])
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "q"}
	if err := h.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("tc: probe: add veth %s: %w", name, privErr(err))
	}
	defer h.LinkDel(veth)
	link, err := h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("tc: probe: %w", err)
	}
	idx := link.Attrs().Index
	root := netlink.QdiscAttrs{LinkIndex: idx, Parent: netlink.HANDLE_ROOT, Handle: netlink.MakeHandle(1, 0)}

	var s Support
	for _, mk := range probeQdiscs {
		q := mk(root)
		err := h.QdiscAdd(q)
		if err == nil {
			err = h.QdiscDel(q)
		}
		s = append(s, Kind{Name: q.Type(), Err: err})
	}
	htb := netlink.NewHtb(root)
	if err := h.QdiscAdd(htb); err != nil {
		return s, fmt.Errorf("tc: probe: add htb for filters: %w", err)
	}
	for i, mk := range probeFilters {
		f := mk(netlink.FilterAttrs{LinkIndex: idx, Parent: root.Handle, Priority: uint16(i + 1), Protocol: ethIPv4})
		err := h.FilterAdd(f)
		if err == nil {
			err = h.FilterDel(f)
		}
		if f.Type() == "bpf" && (errors.Is(err, syscall.EBADF) || errors.Is(err, syscall.EINVAL)) {
			err = nil
		}
		s = append(s, Kind{Name: f.Type(), Filter: true, Err: err})
	}
	return s, nil
}
