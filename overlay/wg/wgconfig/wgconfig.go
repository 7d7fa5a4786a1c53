// Package wgconfig reads WireGuard configuration files as wg-quick writes
// them: one [Interface] section and one [Peer] section per peer, plus a name
// per peer so that gpumesh policies can name devices:
//
//	[Interface]
//	PrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=
//	Address = 10.77.0.1/24
//	ListenPort = 51820
//
//	[Peer]
//	# Name = laptop
//	PublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=
//	AllowedIPs = 10.77.0.2/32
//	Endpoint = 192.0.2.7:51820
//	PersistentKeepalive = 25
//
// A peer's name is a comment line "# Name = laptop" (so that wg-quick still
// reads the file) or the key "Name = laptop".
//
// The reader is strict: an unknown key, a repeated single-valued key, a
// malformed value or a contradictory file (two peers with one public key or
// one AllowedIPs prefix) is an error that names the file and line, such as
// `wg0.conf:7: unknown key "Foo" in [Peer]`. Keys are case-insensitive, as in
// wg(8). wg-quick's hook scripts (PreUp, PostUp, ...) and SaveConfig are
// rejected: gpumesh runs no scripts.
//
// wgconfig imports nothing from gpumesh; it only parses and validates.
package wgconfig

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// Defaults for keys a file leaves out.
const (
	// DefaultMTU is wg-quick's usual MTU: 1500 minus the largest WireGuard
	// overhead (IPv6 outer header).
	DefaultMTU = 1420
	// MinMTU and MaxMTU bound the MTU key.
	MinMTU = 576
	MaxMTU = 65535
)

// File is a parsed, validated configuration file.
type File struct {
	// Name is the file's name as errors show it ("wg0.conf").
	Name string
	// Interface is the local node.
	Interface Interface
	// Peers are the [Peer] sections in file order.
	Peers []Peer
}

// Interface is the [Interface] section.
type Interface struct {
	// Line is the line of the [Interface] header.
	Line int
	// Name is this node's own name, if the section gives one.
	Name string
	// PrivateKey is the node's private key (required).
	PrivateKey Key
	// Addresses are the node's overlay addresses with their prefix
	// lengths (required; a bare address means a /32 or /128).
	Addresses []netip.Prefix
	// ListenPort is the UDP port; 0 picks a free one.
	ListenPort uint16
	// MTU is the overlay MTU; 0 means DefaultMTU.
	MTU int
	// FwMark marks the outer UDP packets (SO_MARK); 0 is none.
	FwMark uint32
	// DNS lists wg-quick's DNS servers and search domains. gpumesh keeps
	// them for callers but configures no resolver.
	DNS []string
	// Table is wg-quick's routing table choice: "" or "auto" (routes for
	// peers' AllowedIPs are added in kernel TUN mode) or "off" (none).
	Table string
}

// Peer is one [Peer] section.
type Peer struct {
	// Line is the line of the [Peer] header.
	Line int
	// Name is the peer's name ("laptop"), or "" when the file gives none.
	Name string
	// PublicKey is the peer's public key (required).
	PublicKey Key
	// PresharedKey is the optional extra symmetric key; zero when unset.
	PresharedKey Key
	// AllowedIPs are the addresses the peer may use as source inside the
	// overlay, masked to their prefix length (at least one is required).
	AllowedIPs []netip.Prefix
	// Endpoint is the peer's outer "host:port", or "" when the peer
	// connects to us first. The host may be a name; it is resolved when
	// the node comes up.
	Endpoint string
	// PersistentKeepalive is the keepalive interval in seconds; 0 is off.
	PersistentKeepalive uint16
}

// Error is a problem in a file, at a line (0 when it concerns the whole file).
type Error struct {
	File string
	Line int
	Msg  string
	Err  error // the cause, if any
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// ErrUnsupported is the cause of errors for wg-quick keys gpumesh refuses.
var ErrUnsupported = errors.New("not supported by gpumesh")

// Load reads and parses the file at path.
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("wgconfig: %w", err)
	}
	return Parse(path, data)
}

// Parse parses data; name is used in error messages.
func Parse(name string, data []byte) (*File, error) {
	p := &parser{f: &File{Name: name}, seen: map[string]int{}}
	for i, line := range strings.Split(string(data), "\n") {
		p.line = i + 1
		if err := p.parseLine(line); err != nil {
			return nil, err
		}
	}
	if err := p.f.validate(); err != nil {
		return nil, err
	}
	return p.f, nil
}

type section int

const (
	sectionNone section = iota
	sectionInterface
	sectionPeer
)

func (s section) String() string {
	switch s {
	case sectionInterface:
		return "[Interface]"
	case sectionPeer:
		return "[Peer]"
	}
	return "top level"
}

type parser struct {
	f       *File
	line    int
	sec     section
	sawIfc  bool
	seen    map[string]int // lower-case single-valued key -> line, in the current section
	curPeer *Peer
}

func (p *parser) errorf(format string, args ...any) error {
	return &Error{File: p.f.Name, Line: p.line, Msg: fmt.Sprintf(format, args...)}
}

func (p *parser) wrap(err error, format string, args ...any) error {
	return &Error{File: p.f.Name, Line: p.line, Msg: fmt.Sprintf(format, args...), Err: err}
}

func (p *parser) parseLine(raw string) error {
	line := strings.TrimSpace(strings.TrimSuffix(raw, "\r"))
	if strings.HasPrefix(line, "#") {
		// "# Name = laptop" names the section's node; other comments are comments.
		k, v, ok := strings.Cut(strings.TrimSpace(line[1:]), "=")
		if ok && strings.EqualFold(strings.TrimSpace(k), "name") && p.sec != sectionNone {
			return p.keyValue("Name", strings.TrimSpace(v))
		}
		return nil
	}
	if i := strings.IndexByte(line, '#'); i >= 0 {
		line = strings.TrimSpace(line[:i])
	}
	if line == "" {
		return nil
	}
	if strings.HasPrefix(line, "[") {
		return p.header(line)
	}
	k, v, ok := strings.Cut(line, "=")
	if !ok {
		return p.errorf("expected \"Key = Value\" or a [Section] header, got %q", line)
	}
	k, v = strings.TrimSpace(k), strings.TrimSpace(v)
	if k == "" {
		return p.errorf("missing key before \"=\"")
	}
	return p.keyValue(k, v)
}

func (p *parser) header(line string) error {
	switch strings.ToLower(line) {
	case "[interface]":
		if p.sawIfc {
			return p.errorf("second [Interface] section")
		}
		p.sawIfc = true
		p.sec = sectionInterface
		p.f.Interface.Line = p.line
	case "[peer]":
		p.sec = sectionPeer
		p.f.Peers = append(p.f.Peers, Peer{Line: p.line})
		p.curPeer = &p.f.Peers[len(p.f.Peers)-1]
	default:
		return p.errorf("unknown section %s (want [Interface] or [Peer])", line)
	}
	clear(p.seen)
	return nil
}

// multi lists the keys that may repeat; their values accumulate.
var multi = map[string]bool{"address": true, "allowedips": true, "dns": true}

// hooks are the wg-quick keys that run scripts or rewrite the file.
var hooks = map[string]bool{"preup": true, "postup": true, "predown": true, "postdown": true, "saveconfig": true}

func (p *parser) keyValue(k, v string) error {
	lk := strings.ToLower(k)
	if p.sec == sectionNone {
		return p.errorf("key %q before any [Interface] or [Peer] section", k)
	}
	if v == "" {
		return p.errorf("empty value for %q", k)
	}
	if !multi[lk] {
		if prev, dup := p.seen[lk]; dup {
			return p.errorf("duplicate key %q in %s (first on line %d)", k, p.sec, prev)
		}
	}
	if p.sec == sectionInterface {
		if err := p.interfaceKey(lk, k, v); err != nil {
			return err
		}
	} else if err := p.peerKey(lk, k, v); err != nil {
		return err
	}
	if _, ok := p.seen[lk]; !ok {
		p.seen[lk] = p.line
	}
	return nil
}

func (p *parser) interfaceKey(lk, k, v string) error {
	ifc := &p.f.Interface
	var err error
	switch lk {
	case "name":
		ifc.Name, err = parseName(v)
	case "privatekey":
		ifc.PrivateKey, err = ParseKey(v)
	case "address":
		var ps []netip.Prefix
		ps, err = parsePrefixes(v, false)
		ifc.Addresses = append(ifc.Addresses, ps...)
	case "listenport":
		var n uint64
		n, err = strconv.ParseUint(v, 10, 16)
		ifc.ListenPort = uint16(n)
	case "mtu":
		var n int
		n, err = strconv.Atoi(v)
		if err == nil && (n < MinMTU || n > MaxMTU) {
			err = fmt.Errorf("out of range [%d, %d]", MinMTU, MaxMTU)
		}
		ifc.MTU = n
	case "fwmark":
		if strings.EqualFold(v, "off") {
			ifc.FwMark = 0
			break
		}
		var n uint64
		n, err = strconv.ParseUint(v, 0, 32)
		ifc.FwMark = uint32(n)
	case "dns":
		for _, s := range strings.Split(v, ",") {
			s = strings.TrimSpace(s)
			if s == "" {
				err = errors.New("empty list element")
				break
			}
			ifc.DNS = append(ifc.DNS, s)
		}
	case "table":
		switch strings.ToLower(v) {
		case "auto", "off":
			ifc.Table = strings.ToLower(v)
		default:
			err = fmt.Errorf("%w: only auto and off", ErrUnsupported)
		}
	default:
		if hooks[lk] {
			return p.wrap(ErrUnsupported, "key %q in [Interface]", k)
		}
		return p.errorf("unknown key %q in [Interface]", k)
	}
	if err != nil {
		return p.wrap(err, "bad %s %q", k, v)
	}
	return nil
}

func (p *parser) peerKey(lk, k, v string) error {
	peer := p.curPeer
	var err error
	switch lk {
	case "name":
		peer.Name, err = parseName(v)
	case "publickey":
		peer.PublicKey, err = ParseKey(v)
	case "presharedkey":
		peer.PresharedKey, err = ParseKey(v)
	case "allowedips":
		var ps []netip.Prefix
		ps, err = parsePrefixes(v, true)
		peer.AllowedIPs = append(peer.AllowedIPs, ps...)
	case "endpoint":
		err = checkEndpoint(v)
		peer.Endpoint = v
	case "persistentkeepalive":
		if strings.EqualFold(v, "off") {
			peer.PersistentKeepalive = 0
			break
		}
		var n uint64
		n, err = strconv.ParseUint(v, 10, 16)
		peer.PersistentKeepalive = uint16(n)
	default:
		return p.errorf("unknown key %q in [Peer]", k)
	}
	if err != nil {
		return p.wrap(err, "bad %s %q", k, v)
	}
	return nil
}

// parseName accepts a DNS-label-like name: letters, digits, '-', '_' and
// '.', starting with a letter or digit, at most 63 characters.
func parseName(s string) (string, error) {
	if len(s) > 63 {
		return "", errors.New("longer than 63 characters")
	}
	for i, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case i > 0 && (c == '-' || c == '_' || c == '.'):
		default:
			return "", fmt.Errorf("character %q not allowed (use letters, digits, '-', '_', '.')", c)
		}
	}
	return s, nil
}

// parsePrefixes parses a comma-separated list of addresses with optional
// prefix lengths. mask reports whether host bits are cleared (AllowedIPs)
// or kept (Address).
func parsePrefixes(v string, mask bool) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range strings.Split(v, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			return nil, errors.New("empty list element")
		}
		var pfx netip.Prefix
		if strings.Contains(s, "/") {
			var err error
			pfx, err = netip.ParsePrefix(s)
			if err != nil {
				return nil, err
			}
		} else {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, err
			}
			pfx = netip.PrefixFrom(a, a.BitLen())
		}
		if pfx.Addr().Zone() != "" {
			return nil, fmt.Errorf("%s: zones are not allowed", s)
		}
		if pfx.Addr().Is4In6() {
			return nil, fmt.Errorf("%s: IPv4-mapped IPv6 addresses are not allowed", s)
		}
		if mask {
			pfx = pfx.Masked()
		}
		out = append(out, pfx)
	}
	return out, nil
}

func checkEndpoint(v string) error {
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return err
	}
	if host == "" {
		return errors.New("missing host")
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return fmt.Errorf("bad port %q", port)
	}
	if strings.ContainsAny(host, " \t,") {
		return fmt.Errorf("bad host %q", host)
	}
	return nil
}

// validate checks what single lines cannot: required keys and conflicts
// between peers.
func (f *File) validate() error {
	at := func(line int, format string, args ...any) error {
		return &Error{File: f.Name, Line: line, Msg: fmt.Sprintf(format, args...)}
	}
	ifc := &f.Interface
	if ifc.Line == 0 {
		return at(0, "no [Interface] section")
	}
	if ifc.PrivateKey.IsZero() {
		return at(ifc.Line, "[Interface] has no PrivateKey")
	}
	if len(ifc.Addresses) == 0 {
		return at(ifc.Line, "[Interface] has no Address (gpumesh needs the node's overlay address)")
	}
	self := ifc.PrivateKey.PublicKey()
	keys := map[Key]int{}
	names := map[string]int{}
	prefixes := map[netip.Prefix]int{}
	if ifc.Name != "" {
		names[strings.ToLower(ifc.Name)] = ifc.Line
	}
	for i := range f.Peers {
		p := &f.Peers[i]
		if p.PublicKey.IsZero() {
			return at(p.Line, "[Peer] has no PublicKey")
		}
		if p.PublicKey == self {
			return at(p.Line, "[Peer] has this node's own public key")
		}
		if prev, dup := keys[p.PublicKey]; dup {
			return at(p.Line, "[Peer] repeats the PublicKey of the [Peer] on line %d", prev)
		}
		keys[p.PublicKey] = p.Line
		if p.Name != "" {
			ln := strings.ToLower(p.Name)
			if prev, dup := names[ln]; dup {
				return at(p.Line, "name %q already used on line %d", p.Name, prev)
			}
			names[ln] = p.Line
		}
		if len(p.AllowedIPs) == 0 {
			return at(p.Line, "[Peer] has no AllowedIPs")
		}
		for _, pfx := range p.AllowedIPs {
			if prev, dup := prefixes[pfx]; dup {
				return at(p.Line, "AllowedIPs %s already belongs to the [Peer] on line %d", pfx, prev)
			}
			prefixes[pfx] = p.Line
		}
	}
	return nil
}

// PeerByName returns the peer named name (case-insensitive).
func (f *File) PeerByName(name string) (*Peer, bool) {
	for i := range f.Peers {
		if f.Peers[i].Name != "" && strings.EqualFold(f.Peers[i].Name, name) {
			return &f.Peers[i], true
		}
	}
	return nil, false
}
