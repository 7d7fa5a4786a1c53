package tc

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"

	"github.com/gpumesh/gpumesh/dscp"
	"github.com/gpumesh/gpumesh/qos"
)

var (
	// ErrNoPrivilege means the process lacks CAP_NET_ADMIN; shaping is
	// skipped (marking still works).
	ErrNoPrivilege = errors.New("tc: CAP_NET_ADMIN not held, host egress shaping skipped")
	// ErrUnsupported means the kernel lacks HTB or the u32 classifier.
	ErrUnsupported = errors.New("tc: kernel lacks htb or u32")
	// ErrBusy means the link already has a configured root qdisc and
	// Config.Replace is false.
	ErrBusy = errors.New("tc: link has a configured root qdisc")
	// ErrInvalidConfig reports a Config Install cannot use.
	ErrInvalidConfig = errors.New("tc: invalid config")
)

// hasPrivilege is HasPrivilege, replaceable by tests.
var hasPrivilege = HasPrivilege

const (
	ethIPv4 = 0x0800
	ethIPv6 = 0x86dd

	defaultMajor    = 0x9d // "gm"-ish and unlikely to be in use
	defaultMinShare = 0.1
	rootMinor       = 1
	// defaultMinor is the default class's: HTB cannot change the class
	// that takes unmatched traffic once the qdisc exists, so whichever
	// class is the default lives here, changed in place by SetClasses.
	defaultMinor = 0xf
	// firstMinor is the first of the other classes' minors.
	firstMinor = 0x10
	// maxClasses bounds a tree: SetClasses gives new classes minors the
	// tree does not use yet, and each leaf qdisc a major of its own.
	maxClasses = 1024
)

// Config describes the tree to install.
type Config struct {
	// Link is the egress interface to shape (required).
	Link string
	// Rate is the link's usable egress rate in bytes per second, set a
	// little below the real bottleneck so that the queue forms here. 0
	// reads the link speed from sysfs (current namespace only).
	Rate int64
	// Classes get one HTB class each, in priority order, and a u32 filter
	// matching their DSCP (IPv4 and IPv6).
	Classes []qos.Class
	// Default names the class for traffic no filter matches, and for peer
	// routes naming a class the tree lacks. Empty: the class with DSCP CS0
	// if there is one, else an extra lowest-priority class "unclassified".
	// A named default must be in every class set (Install, SetClasses).
	Default string
	// MinShare is the fraction of Rate every class but the most urgent is
	// assured (HTB rate); the most urgent class is assured the rest, and
	// every class may borrow up to its Class.Rate cap or the link rate.
	// Default 0.1, lowered as needed so the assured rates fit.
	MinShare float64
	// Replace allows replacing a root qdisc someone configured (one with
	// a non-zero handle). Default qdiscs are always replaced; Close
	// deletes the tree, restoring the kernel default.
	Replace bool
	// Major is the HTB handle major; default 0x9d.
	Major uint16
	// Netns is the path of the network namespace holding Link; empty
	// means the current one.
	Netns string
}

// Report says what Install installed.
type Report struct {
	Link     string
	Rate     int64  // bytes/s of the root class
	Root     string // HTB handle, "9d:"
	Replaced string // kind of the root qdisc replaced
	Leaf     string // qdisc of every leaf class ("pfifo" when the kernel default)
	Classes  []InstalledClass
	Support  Support // nil when the probe could not run
}

// InstalledClass is one HTB class of the tree.
type InstalledClass struct {
	Name     string
	ClassID  string    // "9d:10"
	DSCP     dscp.Code // dscp.None for the added "unclassified" class
	Filtered bool      // a u32 filter on the DSCP leads here
	Default  bool      // unmatched traffic lands here
	Prio     uint32
	Rate     int64 // assured, bytes/s
	Ceil     int64 // cap, bytes/s
	handle   uint32
}

// String renders the report as a few lines for `gpumesh qos status`.
func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "tc: htb %s on %s at %s", r.Root, r.Link, rateStr(r.Rate))
	if r.Replaced != "" {
		fmt.Fprintf(&b, ", replacing %s", r.Replaced)
	}
	fmt.Fprintf(&b, ", leaf qdisc %s\n", r.Leaf)
	for _, c := range r.Classes {
		match := "no filter"
		if c.Filtered {
			match = "u32 dsfield " + c.DSCP.String() + " (ip, ipv6)"
		}
		if c.Default {
			match += ", default"
		}
		fmt.Fprintf(&b, "  %-7s %-14s prio %d  rate %-10s ceil %-10s %s\n",
			c.ClassID, c.Name, c.Prio, rateStr(c.Rate), rateStr(c.Ceil), match)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// rateStr prints bytes/s as bits/s the way tc does.
func rateStr(bytesPerSec int64) string {
	bits := float64(bytesPerSec) * 8
	switch {
	case bits >= 1e9:
		return strconv.FormatFloat(bits/1e9, 'f', -1, 64) + "Gbit"
	case bits >= 1e6:
		return strconv.FormatFloat(bits/1e6, 'f', -1, 64) + "Mbit"
	case bits >= 1e3:
		return strconv.FormatFloat(bits/1e3, 'f', -1, 64) + "Kbit"
	}
	return strconv.FormatFloat(bits, 'f', -1, 64) + "bit"
}

// ClassStats are the kernel's counters of one installed class.
type ClassStats struct {
	Name       string
	ClassID    string
	Bytes      uint64
	Packets    uint32
	Drops      uint32
	Overlimits uint32
	Backlog    uint32 // bytes queued now
}

// Shaper is an installed HTB tree. SetClasses rebuilds it for another class
// set; Close removes it.
type Shaper struct {
	cfg  Config // as populated by Install, Default as the caller gave it; immutable
	link int    // ifindex
	root uint32 // HTB handle

	mu       sync.Mutex
	h        *netlink.Handle // nil once closed; guarded by mu
	report   Report          // what is installed; guarded by mu
	want     []PeerRoute     // the routes as last asked for; guarded by mu
	routes   []PeerRoute     // the installed peer routes, classes resolved; guarded by mu
	slot     int             // index into peerPrios of the routes' filters; guarded by mu
	dscpSlot int             // index into dscpPrios of the DSCP filters; guarded by mu
	stale    []uint32        // classes SetClasses failed to delete; guarded by mu

	failAt func(step string) error // test hook: SetClasses fails at step
}

// populate validates cfg and fills in defaults, on a copy.
func populate(cfg Config) (Config, error) {
	if cfg.Link == "" {
		return cfg, fmt.Errorf("tc: no link: %w", ErrInvalidConfig)
	}
	if err := qos.ValidateClasses(cfg.Classes); err != nil {
		return cfg, fmt.Errorf("tc: %w", err)
	}
	if cfg.Rate < 0 || cfg.MinShare < 0 || cfg.MinShare > 0.5 {
		return cfg, fmt.Errorf("tc: rate %d, min share %v: %w", cfg.Rate, cfg.MinShare, ErrInvalidConfig)
	}
	if cfg.Rate == 0 {
		if cfg.Netns != "" {
			return cfg, fmt.Errorf("tc: link %s in %s: set Rate: %w", cfg.Link, cfg.Netns, ErrInvalidConfig)
		}
		mbit, err := linkSpeed(cfg.Link)
		if err != nil {
			return cfg, fmt.Errorf("tc: link %s speed unknown, set Rate: %w", cfg.Link, err)
		}
		cfg.Rate = mbit * 1e6 / 8
	}
	if cfg.MinShare == 0 {
		cfg.MinShare = defaultMinShare
	}
	if cfg.Major == 0 {
		cfg.Major = defaultMajor
	}
	cfg.Classes = slices.Clone(cfg.Classes)
	slices.SortStableFunc(cfg.Classes, func(a, b qos.Class) int { return cmp.Compare(a.Priority, b.Priority) })
	if cfg.Default == "" {
		cfg.Default = "unclassified"
		if i := slices.IndexFunc(cfg.Classes, func(c qos.Class) bool { return c.DSCP == dscp.CS0 }); i >= 0 {
			cfg.Default = cfg.Classes[i].Name
		}
	}
	if !slices.ContainsFunc(cfg.Classes, func(c qos.Class) bool { return c.Name == cfg.Default }) {
		if cfg.Default != "unclassified" {
			return cfg, fmt.Errorf("tc: default class %q is not a class: %w", cfg.Default, ErrInvalidConfig)
		}
		last := cfg.Classes[len(cfg.Classes)-1].Priority
		cfg.Classes = append(cfg.Classes, qos.Class{Name: cfg.Default, Priority: last + 1})
	}
	if len(cfg.Classes) > maxClasses {
		return cfg, fmt.Errorf("tc: %d classes: %w", len(cfg.Classes), ErrInvalidConfig)
	}
	return cfg, nil
}

// linkSpeed reads /sys/class/net/LINK/speed (Mbit/s).
func linkSpeed(link string) (int64, error) {
	b, err := os.ReadFile("/sys/class/net/" + link + "/speed")
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("speed %q: %w", strings.TrimSpace(string(b)), errors.ErrUnsupported)
	}
	return v, nil
}

// plan computes the installed classes: ids, HTB priorities and rates. The
// default class gets defaultMinor, the others the minors minorOf gives
// (nil: firstMinor on, in priority order).
func plan(cfg Config, minorOf func(name string) uint16) []InstalledClass {
	if minorOf == nil {
		next := uint16(firstMinor)
		minorOf = func(string) uint16 { next++; return next - 1 }
	}
	n := len(cfg.Classes)
	share := cfg.MinShare
	if n > 1 && share*float64(n-1) > 0.5 {
		share = 0.5 / float64(n-1)
	}
	lower := int64(float64(cfg.Rate) * share)
	out := make([]InstalledClass, n)
	prio, prev := uint32(0), cfg.Classes[0].Priority
	for i, c := range cfg.Classes {
		if c.Priority != prev {
			prio, prev = min(prio+1, 7), c.Priority
		}
		ceil := cfg.Rate
		if c.Rate > 0 {
			ceil = min(c.Rate, cfg.Rate)
		}
		rate := lower
		if i == 0 {
			rate = cfg.Rate - lower*int64(n-1)
		}
		minor := uint16(defaultMinor)
		if c.Name != cfg.Default {
			minor = minorOf(c.Name)
		}
		out[i] = InstalledClass{
			Name: c.Name, DSCP: c.DSCP, Prio: prio,
			Rate: max(min(rate, ceil), 1), Ceil: ceil,
			Default: c.Name == cfg.Default,
			handle:  netlink.MakeHandle(cfg.Major, minor),
			ClassID: fmt.Sprintf("%x:%x", cfg.Major, minor),
		}
	}
	// One filter per DSCP, leading to the most urgent class using it; the
	// default class needs none for CS0, the added one none at all.
	seen := map[dscp.Code]bool{}
	for i := range out {
		c := &out[i]
		if seen[c.DSCP] || !c.DSCP.Valid() || (c.Default && c.DSCP == dscp.CS0) {
			continue
		}
		seen[c.DSCP] = true
		c.Filtered = true
	}
	return out
}

// Plan returns the report Install would produce for cfg without touching
// the kernel (no Support, no Replaced). Config.Rate must be set or
// readable from sysfs.
func Plan(cfg Config) (Report, error) {
	cfg, err := populate(cfg)
	if err != nil {
		return Report{}, err
	}
	return Report{Link: cfg.Link, Rate: cfg.Rate, Root: fmt.Sprintf("%x:", cfg.Major), Leaf: "pfifo", Classes: plan(cfg, nil)}, nil
}
