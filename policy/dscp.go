package policy

import (
	"fmt"
	"strconv"
	"strings"
)

// dscpNames maps the DiffServ code point names gpumesh accepts to their
// values: class selectors CS0–CS7 (RFC 2474), assured forwarding AF11–AF43
// (RFC 2597), expedited forwarding EF (RFC 3246), voice admit VA (RFC 5865)
// and lower effort LE (RFC 8622); BE and DF are aliases of CS0, as in qos.
var dscpNames = map[string]uint8{
	"BE": 0, "DF": 0,
	"CS0": 0, "CS1": 8, "CS2": 16, "CS3": 24, "CS4": 32, "CS5": 40, "CS6": 48, "CS7": 56,
	"AF11": 10, "AF12": 12, "AF13": 14,
	"AF21": 18, "AF22": 20, "AF23": 22,
	"AF31": 26, "AF32": 28, "AF33": 30,
	"AF41": 34, "AF42": 36, "AF43": 38,
	"EF": 46, "VA": 44, "LE": 1,
}

// dscpByValue is the canonical name of each named value.
var dscpByValue = func() map[uint8]string {
	m := make(map[uint8]string, len(dscpNames))
	for n, v := range dscpNames {
		if n != "BE" && n != "DF" {
			m[v] = n
		}
	}
	return m
}()

// ParseDSCP parses a DiffServ code point: a name (CS0–CS7, AF11–AF43, EF,
// VA, LE, and BE or DF for CS0; case-insensitive) or a decimal number 0–63.
func ParseDSCP(s string) (uint8, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	if v, ok := dscpNames[t]; ok {
		return v, nil
	}
	if n, err := strconv.ParseUint(t, 10, 8); err == nil {
		if n > 63 {
			return 0, fmt.Errorf("policy: dscp %q: out of range 0-63", s)
		}
		return uint8(n), nil
	}
	msg := fmt.Sprintf("policy: dscp %q: not a code point name (CS0-CS7, AF11-AF43, EF, VA, LE) or a number 0-63", s)
	if sug := suggest(t, dscpNameList()); sug != "" {
		msg += fmt.Sprintf("; did you mean %q?", sug)
	}
	return 0, fmt.Errorf("%s", msg)
}

// DSCPName returns the conventional name of a code point ("EF", "AF41",
// "CS0"), or its decimal value when it has no name.
func DSCPName(v uint8) string {
	if n, ok := dscpByValue[v]; ok {
		return n
	}
	return strconv.Itoa(int(v))
}

func dscpNameList() []string {
	out := make([]string, 0, len(dscpNames))
	for n := range dscpNames {
		out = append(out, n)
	}
	return out
}
