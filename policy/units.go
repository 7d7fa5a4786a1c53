package policy

import (
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
	"unicode"
)

// byteUnits are the multipliers of size suffixes, keyed by lower-case suffix.
// Decimal (KB, MB, …) and binary (KiB, MiB, …) units are both accepted so that
// "64MiB" means exactly what the reader thinks.
var byteUnits = map[string]float64{
	"": 1, "b": 1,
	"k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
	"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}

// bitUnits are rate suffixes counted in bits (tc style), converted to bytes.
var bitUnits = map[string]float64{
	"bit": 1.0 / 8, "kbit": 1e3 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8, "tbit": 1e12 / 8,
	"bps": 1.0 / 8, "kbps": 1e3 / 8, "mbps": 1e6 / 8, "gbps": 1e9 / 8,
}

// ParseSize parses a byte size such as "64MiB", "2GiB", "512KB", "1.5GB" or
// "4096" (bytes). Units are case-insensitive; KB/MB/GB are powers of 1000,
// KiB/MiB/GiB powers of 1024.
func ParseSize(s string) (int64, error) {
	num, unit, err := splitNumber(s)
	if err != nil {
		return 0, fmt.Errorf("policy: size %q: %w", s, err)
	}
	mul, ok := byteUnits[strings.ToLower(unit)]
	if !ok {
		return 0, fmt.Errorf("policy: size %q: unknown unit %q (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)", s, unit)
	}
	return scale(s, num, mul)
}

// ParseRate parses a byte rate such as "200MB/s", "1GiB/s", "800Mbit/s",
// "100mbit" or "1000000" (bytes per second). The "/s" suffix is optional;
// bit units (bit, kbit, mbit, gbit, tbit, and the …bps forms) are divided by 8.
func ParseRate(s string) (int64, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimSuffix(strings.TrimSuffix(t, "/s"), "/S")
	num, unit, err := splitNumber(t)
	if err != nil {
		return 0, fmt.Errorf("policy: rate %q: %w", s, err)
	}
	u := strings.ToLower(unit)
	mul, ok := byteUnits[u]
	if !ok {
		mul, ok = bitUnits[u]
	}
	if !ok {
		return 0, fmt.Errorf("policy: rate %q: unknown unit %q (use e.g. B/s, MB/s, MiB/s, Mbit/s)", s, unit)
	}
	return scale(s, num, mul)
}

// FormatSize renders n bytes with the largest binary unit that keeps it
// exact-looking ("64MiB", "2GiB", "1500B").
func FormatSize(n int64) string {
	for _, u := range []struct {
		name string
		v    int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.v && n%u.v == 0 {
			return strconv.FormatInt(n/u.v, 10) + u.name
		}
	}
	for _, u := range []struct {
		name string
		v    int64
	}{{"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}} {
		if n >= u.v && n%u.v == 0 {
			return strconv.FormatInt(n/u.v, 10) + u.name
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}

// splitNumber splits "1.5GiB" into 1.5 and "GiB".
func splitNumber(s string) (*big.Float, string, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	if i == 0 {
		return nil, "", fmt.Errorf("must start with a number")
	}
	f, ok := new(big.Float).SetString(t[:i])
	if !ok {
		return nil, "", fmt.Errorf("bad number %q", t[:i])
	}
	unit := strings.TrimLeftFunc(t[i:], unicode.IsSpace)
	return f, unit, nil
}

func scale(s string, num *big.Float, mul float64) (int64, error) {
	v := new(big.Float).Mul(num, big.NewFloat(mul))
	if v.Cmp(big.NewFloat(math.MaxInt64)) >= 0 {
		return 0, fmt.Errorf("policy: %q: too large", s)
	}
	n, _ := v.Int64() // fractional bytes round down
	return n, nil
}
