package policy

import (
	"strconv"
	"strings"
)

// parseGPU canonicalises a GPU id: "*", a decimal index, or a GPU/MIG UUID
// (lower-cased).
func parseGPU(s string) (string, bool) {
	if s == "*" {
		return s, true
	}
	if n, err := strconv.ParseUint(s, 10, 16); err == nil {
		return strconv.FormatUint(n, 10), true
	}
	l := lower(s)
	for _, p := range []string{"gpu-", "mig-"} {
		if rest, ok := strings.CutPrefix(l, p); ok && rest != "" {
			for _, ch := range rest {
				if !(ch >= '0' && ch <= '9' || ch >= 'a' && ch <= 'f' || ch == '-' || ch == '/') {
					return "", false
				}
			}
			return l, true
		}
	}
	return "", false
}

