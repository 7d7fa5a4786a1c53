package pool

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/gpumesh/gpumesh/overlay"
)

// Target says which peers make up a pool. It is written as "*" (every
// peer that serves the compute endpoint), or a comma list of "tag:NAME"
// (peers carrying that ACL tag) and peer names or overlay IPs, optionally
// followed by ":PORT":
//
//	tag:gpu
//	gpu-a,gpu-b
//	tag:gpu,gpu-c
//	*
//	tag:gpu:50052
//
// An IPv6 address in a list is written in brackets. A Target is immutable
// once parsed.
type Target struct {
	// All is "*": every peer.
	All bool
	// Tags are the "tag:NAME" items: a peer carrying any of them belongs.
	Tags []string
	// Names are peer names (case-insensitive, short or full) and overlay
	// IPs: a peer matching any of them belongs.
	Names []string
	// Port is the compute endpoint's port; 0 means the pool's default.
	Port int
}

// Bounds on a target's text, which may come from a command line or a
// configuration file.
const (
	maxTargetLen   = 4096
	maxTargetItems = 256
)

// ErrNotTarget is returned by ParseTarget for text that is no pool target.
var ErrNotTarget = errors.New("pool: not a pool target")

// IsTarget reports whether s names a pool rather than one host: "*", a
// tag, or a list of more than one name. Commands use it to choose between
// a pool and a single host; a single name stays a single host.
func IsTarget(s string) bool {
	if s == "*" || strings.HasPrefix(s, "*:") || strings.Contains(s, ",") {
		return true
	}
	return strings.HasPrefix(s, "tag:")
}

// ParseTarget reads a pool target (see Target). It is strict: an empty
// item, a tag or name with characters a tailnet does not allow, or a bad
// port is an error.
func ParseTarget(s string) (Target, error) {
	if s == "" {
		return Target{}, fmt.Errorf("%w: empty", ErrNotTarget)
	}
	if len(s) > maxTargetLen {
		return Target{}, fmt.Errorf("%w: %d bytes, over %d", ErrNotTarget, len(s), maxTargetLen)
	}
	body, port, err := splitPort(s)
	if err != nil {
		return Target{}, fmt.Errorf("pool: target %q: %w", s, err)
	}
	t := Target{Port: port}
	if body == "*" {
		t.All = true
		return t, nil
	}
	items := strings.Split(body, ",")
	if len(items) > maxTargetItems {
		return Target{}, fmt.Errorf("pool: target %q: %d items, over %d", s, len(items), maxTargetItems)
	}
	for _, it := range items {
		switch {
		case it == "":
			return Target{}, fmt.Errorf("pool: target %q: an empty item", s)
		case it == "*":
			return Target{}, fmt.Errorf("pool: target %q: \"*\" stands alone", s)
		case strings.HasPrefix(it, "tag:"):
			if !validTag(it[len("tag:"):]) {
				return Target{}, fmt.Errorf("pool: target %q: %q is not a tag (tag:NAME, NAME a letter then letters, digits or dashes)", s, it)
			}
			if !slices.Contains(t.Tags, it) {
				t.Tags = append(t.Tags, it)
			}
		default:
			name, ok := hostItem(it)
			if !ok {
				return Target{}, fmt.Errorf("pool: target %q: %q is neither a peer name nor an overlay IP (write IPv6 in brackets)", s, it)
			}
			if !slices.ContainsFunc(t.Names, func(n string) bool { return strings.EqualFold(n, name) }) {
				t.Names = append(t.Names, name)
			}
		}
	}
	return t, nil
}

// splitPort takes an optional trailing ":PORT" off s. Tag names start
// with a letter and IPv6 addresses are bracketed, so a trailing colon and
// digits can only be a port.
func splitPort(s string) (string, int, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 || !isDigits(s[i+1:]) {
		return s, 0, nil
	}
	body := s[:i]
	if last := body[strings.LastIndexByte(body, ',')+1:]; last == "tag" {
		return s, 0, nil // "tag:123": left to the tag check, which refuses it
	}
	p, _ := strconv.Atoi(s[i+1:])
	if p < 1 || p > 65535 {
		return "", 0, fmt.Errorf("port %q is not a number from 1 to 65535", s[i+1:])
	}
	if body == "" {
		return "", 0, errors.New("a port with no target before it")
	}
	return body, p, nil
}

func isDigits(s string) bool {
	if s == "" || len(s) > 5 {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// validTag reports whether name is a valid tailnet tag name.
func validTag(name string) bool {
	if name == "" || len(name) > 63 || !isLetter(name[0]) {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !isLetter(c) && !isDigit(c) && c != '-' {
			return false
		}
	}
	return true
}

// hostItem checks one name or overlay IP of a list, and returns it in the
// form peers are matched against (an IP without brackets).
func hostItem(s string) (string, bool) {
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		a, err := netip.ParseAddr(s[1 : len(s)-1])
		if err != nil || !a.Is6() {
			return "", false
		}
		return a.String(), true
	}
	if a, err := netip.ParseAddr(s); err == nil && a.Is4() {
		return a.String(), true
	}
	if len(s) > 253 || !(isLetter(s[0]) || isDigit(s[0])) {
		return "", false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isLetter(c) && !isDigit(c) && c != '-' && c != '.' && c != '_' {
			return "", false
		}
	}
	return s, true
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
func isDigit(c byte) bool  { return c >= '0' && c <= '9' }

// Matches reports whether peer p belongs to the pool t names.
func (t Target) Matches(p overlay.Peer) bool {
	if t.All {
		return true
	}
	for _, tag := range t.Tags {
		if p.HasTag(tag) {
			return true
		}
	}
	for _, n := range t.Names {
		if strings.EqualFold(n, p.Name) || (p.FQDN != "" && strings.EqualFold(strings.TrimSuffix(n, "."), p.FQDN)) {
			return true
		}
		if a, err := netip.ParseAddr(n); err == nil && slices.Contains(p.Addrs, a) {
			return true
		}
	}
	return false
}

// Member is a peer a target names, under the name a pool knows it by.
type Member struct {
	// Name is the peer's name, or its overlay IP when it has none.
	Name string
	Peer overlay.Peer
}

// Members returns the online peers of a peer list that t matches, in the
// list's order, each under its name (see Member). A peer with neither a
// name nor an overlay IP is left out, and of peers listed under one name
// the first is kept.
func (t Target) Members(peers []overlay.Peer) []Member {
	var ms []Member
	seen := make(map[string]bool)
	for _, pe := range peers {
		if !pe.Online || !t.Matches(pe) {
			continue
		}
		name := pe.Name
		if name == "" {
			a := pe.Addr()
			if !a.IsValid() {
				continue
			}
			name = a.String()
		}
		if seen[name] {
			continue
		}
		seen[name] = true
		ms = append(ms, Member{Name: name, Peer: pe})
	}
	return ms
}

// String returns the target as ParseTarget reads it.
func (t Target) String() string {
	var s string
	if t.All {
		s = "*"
	} else {
		items := append([]string(nil), t.Tags...)
		for _, n := range t.Names {
			if a, err := netip.ParseAddr(n); err == nil && a.Is6() {
				n = "[" + n + "]"
			}
			items = append(items, n)
		}
		s = strings.Join(items, ",")
	}
	if t.Port != 0 {
		s += ":" + strconv.Itoa(t.Port)
	}
	return s
}
