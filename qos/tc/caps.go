package tc

import (
	"bufio"
	"io"
	"os"
	"strconv"
	"strings"
)

// capNetAdmin is the bit of CAP_NET_ADMIN in the capability sets.
const capNetAdmin = 12

// HasPrivilege reports whether this process holds CAP_NET_ADMIN in its
// effective set (always false where /proc/self/status does not exist).
func HasPrivilege() bool {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return false
	}
	defer f.Close()
	return hasCap(f, capNetAdmin)
}

// hasCap reports whether the CapEff line of a /proc/<pid>/status has bit.
func hasCap(status io.Reader, bit uint) bool {
	sc := bufio.NewScanner(status)
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "CapEff:")
		if !ok {
			continue
		}
		caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		return err == nil && caps&(1<<bit) != 0
	}
	return false
}
