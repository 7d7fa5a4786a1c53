package wanlab

import (
	"net/netip"
	"os/exec"
	"time"
)

// The lab's addresses: documentation prefixes (RFC 5737), on links that
// exist only inside the lab's namespaces.
var (
	// AddrA is namespace A's address, on its link to R.
	AddrA = netip.MustParseAddr("198.51.100.2")
	// AddrB is namespace B's address, on its link to R.
	AddrB = netip.MustParseAddr("203.0.113.2")
	// RouterA and RouterB are R's addresses on its links to A and to B.
	// Servers listening on them in R are reached without the stage.
	RouterA = netip.MustParseAddr("198.51.100.1")
	RouterB = netip.MustParseAddr("203.0.113.1")

	prefixB = netip.MustParsePrefix("203.0.113.0/24")
)

// Config configures a lab. The zero value is a lab with a perfect link.
type Config struct {
	// AtoB and BtoA impair each direction.
	AtoB, BtoA Impairment
	// Seed seeds both directions' random decisions.
	Seed uint64
	// Trace, if set, is called with each packet the stage writes out, its
	// direction and the stage's time when it was written (since the lab
	// started, like the Delivery's times). It runs on the stage's writer
	// goroutine and should be quick.
	Trace func(d Dir, p Delivery, written time.Duration)
	// Logf receives the stage's errors; nil discards them.
	Logf func(format string, args ...any)
}

// Namespace is one of the lab's network namespaces.
type Namespace struct {
	// Name is the namespace's name, as ip netns exec takes it.
	Name string
	// Addr is its address (R: its address on the link to A).
	Addr netip.Addr
}

// Command returns a command that runs name in the namespace.
func (ns Namespace) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// Dir is a direction across the lab.
type Dir int

const (
	AtoB Dir = iota
	BtoA
)

func (d Dir) String() string {
	if d == AtoB {
		return "A→B"
	}
	return "B→A"
}
