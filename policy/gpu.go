package policy

import (
	"fmt"
	"strings"
)

// A GPU is named in one canonical form, in a policy file and in a request:
//
//   - an index: decimal digits without sign, spaces or leading zeros
//     ("0", "1", "12"; not "00", "+0", "-0", " 0"), below 65536;
//   - a UUID as NVML reports it, "GPU-…" or "MIG-…" followed by hex digits
//     and '-' (and '/' in old MIG names), compared in lower case;
//   - in a rule's gpus only, "*" for every GPU.
//
// A rule may name a GPU by index or by UUID; the server resolves a request
// to both (Request.GPU the index, Request.GPUUUID the UUID) so that either
// matches. A request GPU in any other form matches no rule: it is denied.

// maxGPUID bounds a GPU id: an NVML UUID is 40 bytes, a MIG one a few more.
const maxGPUID = 96

// isIndex reports whether s is a GPU index in canonical form.
func isIndex(s string) bool {
	if s == "" || len(s) > 5 || s[0] == '0' && len(s) > 1 {
		return false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
		n = n*10 + int(s[i]-'0')
	}
	return n < 1<<16
}

// isUUID reports whether s is a GPU or MIG UUID, in any case.
func isUUID(s string) bool {
	if len(s) <= 4 || len(s) > maxGPUID {
		return false
	}
	if p := lower(s[:4]); p != "gpu-" && p != "mig-" {
		return false
	}
	for i := 4; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' || c == '-' || c == '/') {
			return false
		}
	}
	return true
}

// parseGPU checks one entry of a rule's gpus and returns it in canonical
// form: "*", an index, or a lower-cased UUID. An index written any other
// way ("00", "+1") is an error, so that a file says each GPU one way.
func parseGPU(s string) (string, error) {
	switch {
	case s == "*" || isIndex(s):
		return s, nil
	case isUUID(s):
		return lower(s), nil
	}
	t := strings.TrimSpace(s)
	t = strings.TrimLeft(t, "+")
	if t != "" && strings.Trim(t, "0123456789") == "" {
		if u := strings.TrimLeft(t, "0"); u == "" || isIndex(u) {
			if u == "" {
				u = "0"
			}
			return "", fmt.Errorf("GPU %q: write the index as %q (decimal, without sign, spaces or leading zeros)", s, u)
		}
	}
	return "", fmt.Errorf(`GPU %q: want an index such as "0", a UUID such as "GPU-8f6c…", or "*"`, s)
}

// canonicalGPU returns the request's GPU and GPU UUID in the form rules
// hold: GPU "" is "0", UUIDs are lower-cased. ok is false when either is in
// another form, or when GPU is a UUID that GPUUUID contradicts; such a
// request matches no rule.
func (r Request) canonicalGPU() (gpu, uuid string, ok bool) {
	switch {
	case r.GPU == "":
		gpu = "0"
	case isIndex(r.GPU):
		gpu = r.GPU
	case isUUID(r.GPU):
		gpu = lower(r.GPU)
	default:
		return "", "", false
	}
	switch {
	case r.GPUUUID == "":
	case isUUID(r.GPUUUID):
		uuid = lower(r.GPUUUID)
		if gpu != uuid && !isIndex(gpu) {
			return "", "", false
		}
	default:
		return "", "", false
	}
	return gpu, uuid, true
}

// clip renders a client-supplied string for a decision's reason: short
// plain text as it is, anything else quoted and cut to 64 bytes, so that a
// hostile kernel or GPU name cannot flood a log that records reasons.
func clip(s string) string {
	const max = 64
	plain := len(s) > 0 && len(s) <= max
	for i := 0; plain && i < len(s); i++ {
		plain = s[i] > ' ' && s[i] < 0x7f && s[i] != '"'
	}
	if plain {
		return s
	}
	if len(s) > max {
		return fmt.Sprintf("%q…", s[:max])
	}
	return fmt.Sprintf("%q", s)
}
