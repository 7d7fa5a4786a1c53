package qos

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// MaxDSCP is the largest DSCP value (6 bits).
const MaxDSCP = 63

// Common code points.
const (
	DSCPDefault uint8 = 0  // CS0, best effort
	DSCPAF41    uint8 = 34 // the default for GPU traffic
	DSCPEF      uint8 = 46
)

// ErrBadDSCP reports a DSCP string that is neither a known name nor a
// number in 0..63.
var ErrBadDSCP = errors.New("bad dscp")

// dscpNames maps the standard names (RFC 2474, 2597, 3246, 5865, 8622) to
// values. Canonical names are upper case; "BE" and "DF" are aliases of CS0.
var dscpNames = map[string]uint8{
	"CS0": 0, "BE": 0, "DF": 0, "LE": 1,
	"CS1": 8, "AF11": 10, "AF12": 12, "AF13": 14,
	"CS2": 16, "AF21": 18, "AF22": 20, "AF23": 22,
	"CS3": 24, "AF31": 26, "AF32": 28, "AF33": 30,
	"CS4": 32, "AF41": 34, "AF42": 36, "AF43": 38,
	"CS5": 40, "VA": 44, "EF": 46,
	"CS6": 48, "CS7": 56,
}

// canonical is the name DSCPName prints for each named value.
var canonical = func() map[uint8]string {
	m := make(map[uint8]string, len(dscpNames))
	for name, v := range dscpNames {
		if name == "BE" || name == "DF" {
			continue
		}
		m[v] = name
	}
	return m
}()

// ParseDSCP parses a DSCP given as a standard name ("AF41", "ef", "cs0",
// "BE"; case-insensitive) or a number 0..63 (decimal, or hex with 0x).
func ParseDSCP(s string) (uint8, error) {
	if v, ok := dscpNames[strings.ToUpper(strings.TrimSpace(s))]; ok {
		return v, nil
	}
	n, err := strconv.ParseUint(strings.TrimSpace(s), 0, 8)
	if err != nil || n > MaxDSCP {
		return 0, fmt.Errorf("qos: dscp %q: want a name (AF41, EF, CS0...) or 0..63: %w", s, ErrBadDSCP)
	}
	return uint8(n), nil
}

// DSCPName returns the standard name of v ("AF41"), or its decimal value
// when it has none. ParseDSCP(DSCPName(v)) == v for every v in 0..63.
func DSCPName(v uint8) string {
	if name, ok := canonical[v]; ok {
		return name
	}
	return strconv.Itoa(int(v))
}

// TOS returns the IPv4 TOS / IPv6 traffic-class byte carrying dscp while
// keeping the two ECN bits of old.
func TOS(dscp uint8, old byte) byte { return dscp<<2 | old&0x03 }
