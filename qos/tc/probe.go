package tc

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
)

// Kind is one qdisc or filter kind and whether the kernel accepted it.
type Kind struct {
	Name   string
	Filter bool  // a classifier, not a qdisc
	Err    error // nil when it works
}

// Works reports whether the kernel accepted the kind.
func (k Kind) Works() bool { return k.Err == nil }

// Missing reports whether the kernel lacks the kind (as opposed to
// refusing it for another reason).
func (k Kind) Missing() bool {
	return errors.Is(k.Err, syscall.ENOENT) || errors.Is(k.Err, syscall.EOPNOTSUPP)
}

// Support is the result of a probe.
type Support []Kind

// Has reports whether the qdisc or filter kind name works.
func (s Support) Has(name string) bool {
	for _, k := range s {
		if k.Name == name {
			return k.Works()
		}
	}
	return false
}

// String lists the kinds, e.g.
// "qdiscs: htb tbf pfifo (missing: prio fq); filters: u32 bpf (missing: flower)".
func (s Support) String() string {
	part := func(filter bool) string {
		var ok, missing, failed []string
		for _, k := range s {
			switch {
			case k.Filter != filter:
			case k.Works():
				ok = append(ok, k.Name)
			case k.Missing():
				missing = append(missing, k.Name)
			default:
				failed = append(failed, fmt.Sprintf("%s: %v", k.Name, k.Err))
			}
		}
		out := strings.Join(ok, " ")
		if len(missing) > 0 {
			out += " (missing: " + strings.Join(missing, " ") + ")"
		}
		if len(failed) > 0 {
			out += " (failed: " + strings.Join(failed, "; ") + ")"
		}
		return out
	}
	return "qdiscs: " + part(false) + "; filters: " + part(true)
}

// ProbeConfig says where to probe. The zero value probes in the current
// network namespace.
type ProbeConfig struct {
	// Netns is the path of a network namespace (/run/netns/NAME); empty
	// means the current one.
	Netns string
}
