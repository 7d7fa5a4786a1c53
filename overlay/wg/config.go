package wg

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/gpumesh/gpumesh/dscp"
	"github.com/gpumesh/gpumesh/overlay/wg/wgconfig"
)

// Mode selects a Node's data path.
type Mode int

const (
	// ModeNetstack carries overlay traffic in a userspace TCP/IP stack
	// inside the process. It needs no privileges.
	ModeNetstack Mode = iota
	// ModeTUN creates a kernel TUN interface (needs CAP_NET_ADMIN), so
	// that every program on the host can use the overlay.
	ModeTUN
)

func (m Mode) String() string {
	switch m {
	case ModeNetstack:
		return "netstack"
	case ModeTUN:
		return "tun"
	}
	return "Mode(" + strconv.Itoa(int(m)) + ")"
}

// ParseMode parses "netstack" or "tun", as a command-line flag gives it.
func ParseMode(s string) (Mode, error) {
	switch strings.ToLower(s) {
	case "", "netstack":
		return ModeNetstack, nil
	case "tun":
		return ModeTUN, nil
	}
	return 0, fmt.Errorf("wg: unknown mode %q (want netstack or tun)", s)
}

// DefaultTUNName is the interface name ModeTUN uses when Config.TUNName is empty.
const DefaultTUNName = "gpumesh0"

// Config configures a Node. The zero value is not enough only in that a
// configuration file (File or Path) is required.
type Config struct {
	// File is the parsed configuration. If nil, the file at Path is loaded.
	File *wgconfig.File
	// Path is the configuration file to load when File is nil.
	Path string
	// Mode is the data path; the zero value is ModeNetstack.
	Mode Mode
	// TUNName names the kernel interface in ModeTUN; empty means
	// DefaultTUNName. At most 15 bytes.
	TUNName string
	// DSCP, unless dscp.None, is written into the outer IP header of
	// every WireGuard UDP packet the node sends, ECN bits kept. CS0 is a
	// code point too: it clears a DSCP the sockets had.
	DSCP dscp.Code
	// Congestion is the TCP congestion control of the node's connections
	// in ModeTUN, where they are the kernel's: "" picks BBR where the
	// kernel offers it (overlay/tcpcc), "system" leaves the system's
	// default, another name is required. ModeNetstack takes "" or
	// "system" only: its TCP is gVisor's.
	Congestion string
	// Logf receives the node's and wireguard-go's error logs; nil
	// discards them.
	Logf func(format string, args ...any)
	// Verbose also sends wireguard-go's verbose logs (handshakes,
	// keepalives) to Logf.
	Verbose bool

	// For tests and benchmarks only: legacyNetstack uses wireguard-go's
	// tun/netstack (one packet per call) instead of userStack;
	// tunNoOffloads opens the kernel TUN device without offloads, as on a
	// kernel that lacks them.
	legacyNetstack, tunNoOffloads bool
}
