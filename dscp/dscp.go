package dscp

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/gpumesh/gpumesh/internal/human"
)

// Code is a DiffServ code point 0..63, or None.
//
// It holds the value plus one, so that its zero value is None; make a Code
// from a number with Of, never with a conversion (Code(34) is the code
// point 33, not AF41), and read its number back with Value.
type Code uint8

// None is no code point: leave the packets' DSCP as it is. It is the zero
// Code.
const None Code = 0

// Max is the largest DSCP value (6 bits).
const Max = 63

// The standard code points: class selectors (RFC 2474), assured forwarding
// (RFC 2597), expedited forwarding (RFC 3246), voice admit (RFC 5865) and
// lower effort (RFC 8622).
const (
	CS0  = Code(1 + 0)
	LE   = Code(1 + 1)
	CS1  = Code(1 + 8)
	AF11 = Code(1 + 10)
	AF12 = Code(1 + 12)
	AF13 = Code(1 + 14)
	CS2  = Code(1 + 16)
	AF21 = Code(1 + 18)
	AF22 = Code(1 + 20)
	AF23 = Code(1 + 22)
	CS3  = Code(1 + 24)
	AF31 = Code(1 + 26)
	AF32 = Code(1 + 28)
	AF33 = Code(1 + 30)
	CS4  = Code(1 + 32)
	AF41 = Code(1 + 34)
	AF42 = Code(1 + 36)
	AF43 = Code(1 + 38)
	CS5  = Code(1 + 40)
	VA   = Code(1 + 44)
	EF   = Code(1 + 46)
	CS6  = Code(1 + 48)
	CS7  = Code(1 + 56)
)

// names is the one name table: each standard code point under its
// canonical name, in value order.
var names = [...]struct {
	name string
	code Code
}{
	{"CS0", CS0}, {"LE", LE}, {"CS1", CS1}, {"AF11", AF11}, {"AF12", AF12}, {"AF13", AF13},
	{"CS2", CS2}, {"AF21", AF21}, {"AF22", AF22}, {"AF23", AF23},
	{"CS3", CS3}, {"AF31", AF31}, {"AF32", AF32}, {"AF33", AF33},
	{"CS4", CS4}, {"AF41", AF41}, {"AF42", AF42}, {"AF43", AF43},
	{"CS5", CS5}, {"VA", VA}, {"EF", EF}, {"CS6", CS6}, {"CS7", CS7},
}

// aliases are other names Parse accepts: best effort and default
// forwarding are CS0.
var aliases = [...]struct {
	name string
	code Code
}{{"BE", CS0}, {"DF", CS0}}

// ErrBad reports a string that is neither a code point name nor a number
// 0..63, or a number out of range.
var ErrBad = errors.New("bad dscp")

// Of returns the code point with value v (0..63).
func Of(v uint8) (Code, error) {
	if v > Max {
		return None, fmt.Errorf("dscp: %d out of range 0-63: %w", v, ErrBad)
	}
	return Code(v + 1), nil
}

// Value returns c's six-bit value. None has no value and gives 0, the
// value of CS0: test for None before using it.
func (c Code) Value() uint8 {
	if c == None {
		return 0
	}
	return uint8(c) - 1
}

// Valid reports whether c is a code point (not None, and in range).
func (c Code) Valid() bool { return c != None && c <= Max+1 }

// String returns c's canonical name ("AF41", "CS0"), its decimal value
// when it has none ("13"), or "none".
func (c Code) String() string {
	switch {
	case c == None:
		return "none"
	case !c.Valid():
		return "Code(" + strconv.Itoa(int(c)) + ")"
	}
	for _, n := range names {
		if n.code == c {
			return n.name
		}
	}
	return strconv.Itoa(int(c.Value()))
}

// TOS returns the IPv4 TOS / IPv6 traffic-class byte carrying c, keeping
// the two ECN bits of old. For None it returns old unchanged.
func (c Code) TOS(old byte) byte {
	if !c.Valid() {
		return old
	}
	return c.Value()<<2 | old&0x03
}

// Parse parses a code point given as a standard name (CS0-CS7, AF11-AF43,
// EF, VA, LE, and BE or DF for CS0; case-insensitive) or a decimal number
// 0-63. Surrounding spaces are ignored. A name one or two typos away from
// a standard one gets a "did you mean" hint. Errors wrap ErrBad.
func Parse(s string) (Code, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	for _, n := range names {
		if n.name == t {
			return n.code, nil
		}
	}
	for _, n := range aliases {
		if n.name == t {
			return n.code, nil
		}
	}
	if v, err := strconv.ParseUint(t, 10, 8); err == nil && v <= Max {
		return Code(v + 1), nil
	}
	if t != "" && strings.Trim(t, "0123456789") == "" {
		return None, &ParseError{Input: s, Reason: "out of range 0-63"}
	}
	return None, &ParseError{Input: s, Reason: "not a code point name (CS0-CS7, AF11-AF43, EF, VA, LE, BE) or a number 0-63", Hint: closest(t)}
}

// ParseError is Parse's error. It matches ErrBad (errors.Is).
type ParseError struct {
	Input  string // what was parsed
	Reason string // why it is no code point
	Hint   string // the standard name it is probably a typo of, or ""
}

func (e *ParseError) Error() string {
	msg := fmt.Sprintf("dscp %q: %s", e.Input, e.Reason)
	if e.Hint != "" {
		msg += fmt.Sprintf("; did you mean %q?", e.Hint)
	}
	return msg
}

// Is makes a ParseError match ErrBad.
func (e *ParseError) Is(target error) bool { return target == ErrBad }

// MarshalText encodes c as String does; None as the empty string.
func (c Code) MarshalText() ([]byte, error) {
	if c == None {
		return []byte{}, nil
	}
	if !c.Valid() {
		return nil, fmt.Errorf("dscp: marshal %s: %w", c, ErrBad)
	}
	return []byte(c.String()), nil
}

// UnmarshalText decodes what MarshalText encodes (and anything Parse
// accepts); the empty string is None.
func (c *Code) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*c = None
		return nil
	}
	v, err := Parse(string(b))
	if err != nil {
		return err
	}
	*c = v
	return nil
}

// closest returns the standard name nearest to s by edit distance, or ""
// when none is close enough to be a plausible typo.
func closest(s string) string {
	all := make([]string, len(names))
	for i, n := range names {
		all[i] = n.name
	}
	return human.Closest(s, all)
}
