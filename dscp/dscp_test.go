package dscp

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in   string
		want Code
		name string
	}{
		{"AF41", AF41, "AF41"}, {"af41", AF41, "AF41"}, {" EF ", EF, "EF"}, {"ef", EF, "EF"},
		{"CS0", CS0, "CS0"}, {"cs0", CS0, "CS0"}, {"BE", CS0, "CS0"}, {"df", CS0, "CS0"},
		{"LE", LE, "LE"}, {"AF11", AF11, "AF11"}, {"AF23", AF23, "AF23"}, {"AF43", AF43, "AF43"},
		{"CS6", CS6, "CS6"}, {"CS7", CS7, "CS7"}, {"VA", VA, "VA"},
		{"0", CS0, "CS0"}, {"34", AF41, "AF41"}, {"46", EF, "EF"}, {"63", mustOf(t, 63), "63"}, {" 13 ", mustOf(t, 13), "13"},
	}
	for _, tt := range tests {
		got, err := Parse(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("Parse(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
		if s := got.String(); s != tt.name {
			t.Errorf("Parse(%q).String() = %q, want %q", tt.in, s, tt.name)
		}
	}
	for _, bad := range []string{"", "EF2", "AF44", "CS8", "64", "640", "-1", "1.5", "0x22", "expedited", "af 41", "none", "off"} {
		if got, err := Parse(bad); !errors.Is(err, ErrBad) || got != None {
			t.Errorf("Parse(%q) = %v, %v; want None and ErrBad", bad, got, err)
		}
	}
}

func TestParseSuggests(t *testing.T) {
	tests := []struct{ in, hint string }{
		{"EF2", `did you mean "EF"?`},
		{"AF44", `did you mean "AF41"?`}, // ties go to the first name alphabetically
		{"cs8", `did you mean "CS0"?`},
		{"expedited", ""},
		{"64", "out of range 0-63"},
	}
	for _, tt := range tests {
		_, err := Parse(tt.in)
		if err == nil {
			t.Fatalf("Parse(%q) succeeded", tt.in)
		}
		if tt.hint == "" {
			if strings.Contains(err.Error(), "did you mean") {
				t.Errorf("Parse(%q): %v; want no hint", tt.in, err)
			}
			continue
		}
		if !strings.Contains(err.Error(), tt.hint) {
			t.Errorf("Parse(%q): %v; want %q", tt.in, err, tt.hint)
		}
	}
}

func mustOf(t *testing.T, v uint8) Code {
	t.Helper()
	c, err := Of(v)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestZeroIsNone: the zero Code is None, distinct from CS0, and every
// value 0..63 survives Of, Value, String and Parse.
func TestZeroIsNone(t *testing.T) {
	var zero Code
	if zero != None || zero == CS0 || zero.Valid() || !CS0.Valid() {
		t.Fatalf("zero %v, CS0 %v: want None distinct from CS0", zero, CS0)
	}
	if CS0.Value() != 0 || AF41.Value() != 34 || EF.Value() != 46 || CS7.Value() != 56 {
		t.Errorf("values: CS0 %d AF41 %d EF %d CS7 %d", CS0.Value(), AF41.Value(), EF.Value(), CS7.Value())
	}
	if None.String() != "none" {
		t.Errorf("None.String() = %q", None.String())
	}
	for v := range uint8(Max + 1) {
		c := mustOf(t, v)
		if c == None || c.Value() != v {
			t.Fatalf("Of(%d) = %v (value %d)", v, c, c.Value())
		}
		if got, err := Parse(c.String()); err != nil || got != c {
			t.Errorf("Parse(%q) = %v, %v; want %v", c.String(), got, err, c)
		}
	}
	if _, err := Of(64); !errors.Is(err, ErrBad) {
		t.Errorf("Of(64): %v, want ErrBad", err)
	}
}

func TestTOS(t *testing.T) {
	tests := []struct {
		c    Code
		old  byte
		want byte
	}{
		{AF41, 0x00, 0x88}, {AF41, 0x02, 0x8a}, {AF41, 0x03, 0x8b}, {EF, 0xfd, 0xb9},
		{CS0, 0x8a, 0x02},  // CS0 clears the DSCP, keeps ECN
		{None, 0x8a, 0x8a}, // None leaves the byte alone
	}
	for _, tt := range tests {
		if got := tt.c.TOS(tt.old); got != tt.want {
			t.Errorf("%v.TOS(%#x) = %#x, want %#x", tt.c, tt.old, got, tt.want)
		}
	}
}

func TestText(t *testing.T) {
	type doc struct {
		A Code `json:"a"`
		B Code `json:"b"`
		C Code `json:"c,omitempty"`
	}
	b, err := json.Marshal(doc{A: AF41, B: CS0})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), `{"a":"AF41","b":"CS0"}`; got != want {
		t.Errorf("marshal = %s, want %s", got, want)
	}
	var d doc
	if err := json.Unmarshal([]byte(`{"a":"ef","b":"13","c":""}`), &d); err != nil {
		t.Fatal(err)
	}
	if d.A != EF || d.B != mustOf(t, 13) || d.C != None {
		t.Errorf("unmarshal = %+v", d)
	}
	if err := json.Unmarshal([]byte(`{"a":"AF44"}`), &d); !errors.Is(err, ErrBad) {
		t.Errorf("unmarshal AF44: %v, want ErrBad", err)
	}
}
