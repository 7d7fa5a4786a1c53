package policy

import (
	"fmt"
	"strings"
)

// kind is a subject kind. Its order is specificity: when several rules
// match a request, the one that matched through the most specific kind
// decides the limits.
type kind int

const (
	kindAny   kind = iota // "*": any identified caller
	kindGroup             // "group:NAME"
	kindTag               // "tag:NAME"
	kindCap               // "cap:NAME", an app capability granted by the tailnet
	kindUser              // "user:LOGIN", or a bare entry containing "@"
	kindNode              // "node:NAME" or a bare node name
	kindWG                // "wg:NAME", a static WireGuard peer
	kindK8sNS             // "k8s:NAMESPACE/*", every pod of a namespace
	kindK8sSA             // "k8s:NAMESPACE/SERVICEACCOUNT", the pods running as it
)

func (k kind) String() string {
	switch k {
	case kindAny:
		return "any"
	case kindGroup:
		return "group"
	case kindTag:
		return "tag"
	case kindCap:
		return "cap"
	case kindUser:
		return "user"
	case kindNode:
		return "node"
	case kindWG:
		return "wg"
	case kindK8sNS, kindK8sSA:
		return "k8s"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// specificity ranks a kind: node and wg (one device) > user > cap > tag >
// group > "*". Node and wg share a rank; a subject is only ever one of them.
// A service account ranks as a user (one identity), a namespace as a tag
// (a set of workloads); pods are named only by these, groups and "*".
func (k kind) specificity() int {
	switch k {
	case kindWG:
		return int(kindNode)
	case kindK8sSA:
		return int(kindUser)
	case kindK8sNS:
		return int(kindTag)
	}
	return int(k)
}

// subjectRef is one entry of a subjects or members list.
type subjectRef struct {
	kind kind
	name string // canonical key: lower-case for nodes, users, tags, wg peers and groups; exact for caps
	text string // as written
}

// parseSubject parses one entry of a rule's subjects or a group's members.
func parseSubject(s string) (subjectRef, error) {
	t := strings.TrimSpace(s)
	if t != s || t == "" {
		return subjectRef{}, fmt.Errorf("subject %q: empty or padded with spaces", s)
	}
	if t == "*" {
		return subjectRef{kind: kindAny, text: t}, nil
	}
	if rest, ok := strings.CutPrefix(t, "k8s:"); ok {
		return parseK8sSubject(t, rest)
	}
	prefix, rest, hasPrefix := strings.Cut(t, ":")
	if !hasPrefix {
		if strings.Contains(t, "@") {
			prefix, rest = "user", t
		} else {
			prefix, rest = "node", t
		}
	}
	ref := subjectRef{text: t}
	switch prefix {
	case "node":
		ref.kind = kindNode
		if !validName(rest) {
			return ref, fmt.Errorf("node %q: a node name is letters, digits, '-', '_' and '.'", rest)
		}
	case "wg":
		ref.kind = kindWG
		if !validName(rest) {
			return ref, fmt.Errorf("WireGuard peer %q: a peer name is letters, digits, '-', '_' and '.'", rest)
		}
	case "user":
		ref.kind = kindUser
		login, err := parseLogin(rest)
		if err != nil {
			return ref, err
		}
		ref.name = login
		return ref, nil
	case "tag":
		ref.kind = kindTag
		if !validTag(rest) {
			return ref, fmt.Errorf("tag %q: a tag name starts with a letter and has only letters, digits and '-'", t)
		}
		ref.name = "tag:" + lower(rest)
		return ref, nil
	case "group":
		ref.kind = kindGroup
		if !validName(rest) {
			return ref, fmt.Errorf("group %q: a group name is letters, digits, '-', '_' and '.'", rest)
		}
	case "cap":
		ref.kind = kindCap
		if rest == "" || strings.ContainsAny(rest, " \t\n\"") {
			return ref, fmt.Errorf("capability %q: want cap:DOMAIN/PATH, e.g. cap:gpumesh.dev/cap/gpu", t)
		}
		ref.name = rest // capability names are case-sensitive
		return ref, nil
	default:
		if strings.Contains(t, "@") {
			// "alice@example.com" with a colon elsewhere is still a login.
			ref.kind = kindUser
			if login, err := parseLogin(t); err == nil {
				ref.name = login
				return ref, nil
			}
		}
		return ref, fmt.Errorf("subject %q: unknown kind %q (want a node name, a login, node:, user:, tag:, group:, cap:, wg:, k8s: or *)", t, prefix)
	}
	ref.name = lower(rest)
	return ref, nil
}

func validName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// parseLogin returns a user entry's login in canonical form: lower case,
// and without the one trailing "@" of Headscale's spelling ("alice@" is the
// login "alice"). A login is what the control server reports for the
// caller's user: "alice@example.com" from Tailscale or an OIDC Headscale,
// "alice@github" from a GitHub login, bare "alice" for a user made with
// `headscale users create alice` and no email.
func parseLogin(s string) (string, error) {
	login := strings.TrimSuffix(s, "@")
	switch {
	case login == "":
		return "", fmt.Errorf("user %q: empty login", s)
	case len(login) > 320:
		return "", fmt.Errorf("user %q…: a login is at most 320 bytes", s[:32])
	case login[0] == '@' || strings.HasSuffix(login, "@"):
		return "", fmt.Errorf("user %q: a login has a name before its @ (alice@example.com, or alice@ for a user without a domain)", s)
	}
	for _, c := range login {
		if c <= ' ' || c == 0x7f || c == '"' || c == ',' || c == '*' || c == '\\' {
			return "", fmt.Errorf("user %q: a login has no spaces, control characters, quotes, commas or '*'", s)
		}
	}
	return lower(login), nil
}

func validTag(s string) bool {
	if s == "" || !(s[0] >= 'a' && s[0] <= 'z' || s[0] >= 'A' && s[0] <= 'Z') {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// lower is strings.ToLower, which does not allocate for strings that are
// already lower case (the common case on the hot path).
func lower(s string) string { return strings.ToLower(s) }
