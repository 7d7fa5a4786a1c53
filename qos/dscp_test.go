package qos

import (
	"errors"
	"testing"
)

func TestParseDSCP(t *testing.T) {
	tests := []struct {
		in   string
		want uint8
		err  bool
	}{
		{in: "AF41", want: 34},
		{in: "af41", want: 34},
		{in: " EF ", want: 46},
		{in: "CS0", want: 0},
		{in: "BE", want: 0},
		{in: "df", want: 0},
		{in: "LE", want: 1},
		{in: "AF11", want: 10},
		{in: "AF23", want: 22},
		{in: "CS6", want: 48},
		{in: "CS7", want: 56},
		{in: "VA", want: 44},
		{in: "0", want: 0},
		{in: "34", want: 34},
		{in: "63", want: 63},
		{in: "0x22", want: 34},
		{in: "64", err: true},
		{in: "-1", err: true},
		{in: "AF44", err: true},
		{in: "", err: true},
		{in: "0x88", err: true}, // a TOS byte, not a DSCP
		{in: "af 41", err: true},
	}
	for _, tt := range tests {
		got, err := ParseDSCP(tt.in)
		if tt.err {
			if !errors.Is(err, ErrBadDSCP) {
				t.Errorf("ParseDSCP(%q) = %d, %v; want ErrBadDSCP", tt.in, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseDSCP(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
}

func TestDSCPName(t *testing.T) {
	tests := []struct {
		v    uint8
		want string
	}{
		{0, "CS0"}, {1, "LE"}, {10, "AF11"}, {34, "AF41"}, {38, "AF43"},
		{44, "VA"}, {46, "EF"}, {56, "CS7"}, {3, "3"}, {63, "63"},
	}
	for _, tt := range tests {
		if got := DSCPName(tt.v); got != tt.want {
			t.Errorf("DSCPName(%d) = %q, want %q", tt.v, got, tt.want)
		}
	}
	for v := range uint8(MaxDSCP + 1) {
		if got, err := ParseDSCP(DSCPName(v)); err != nil || got != v {
			t.Errorf("ParseDSCP(DSCPName(%d)) = %d, %v", v, got, err)
		}
	}
}

func TestTOS(t *testing.T) {
	tests := []struct {
		dscp uint8
		old  byte
		want byte
	}{
		{34, 0x00, 0x88}, {34, 0x02, 0x8a}, {34, 0x03, 0x8b}, {46, 0xfd, 0xb9}, {0, 0x8a, 0x02},
	}
	for _, tt := range tests {
		if got := TOS(tt.dscp, tt.old); got != tt.want {
			t.Errorf("TOS(%d, %#x) = %#x, want %#x", tt.dscp, tt.old, got, tt.want)
		}
	}
}

func FuzzParseDSCP(f *testing.F) {
	for _, s := range []string{"AF41", "ef", "63", "64", "0x3f", "", "cs7", "١"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseDSCP(s)
		if err != nil {
			if !errors.Is(err, ErrBadDSCP) {
				t.Fatalf("error %v does not wrap ErrBadDSCP", err)
			}
			return
		}
		if v > MaxDSCP {
			t.Fatalf("ParseDSCP(%q) = %d > 63", s, v)
		}
		if back, err := ParseDSCP(DSCPName(v)); err != nil || back != v {
			t.Fatalf("round trip %q -> %d -> %q -> %d, %v", s, v, DSCPName(v), back, err)
		}
	})
}

func TestValidateClasses(t *testing.T) {
	ok := Class{Name: "gpu", DSCP: 34}
	tests := []struct {
		name    string
		classes []Class
		wantErr bool
	}{
		{"one", []Class{ok}, false},
		{"capped", []Class{ok, {Name: "bulk", DSCP: 10, Priority: 3, Rate: 1e6, Burst: 64 << 10}}, false},
		{"rate without burst", []Class{{Name: "b", Rate: 1000}}, false},
		{"empty list", nil, true},
		{"empty name", []Class{{DSCP: 1}}, true},
		{"duplicate", []Class{ok, ok}, true},
		{"dscp range", []Class{{Name: "x", DSCP: 64}}, true},
		{"negative rate", []Class{{Name: "x", Rate: -1}}, true},
		{"negative burst", []Class{{Name: "x", Rate: 1, Burst: -1}}, true},
		{"burst without rate", []Class{{Name: "x", Burst: 10}}, true},
	}
	for _, tt := range tests {
		err := ValidateClasses(tt.classes)
		if tt.wantErr != (err != nil) {
			t.Errorf("%s: err = %v, wantErr %v", tt.name, err, tt.wantErr)
		}
		if err != nil && !errors.Is(err, ErrInvalidClass) {
			t.Errorf("%s: %v does not wrap ErrInvalidClass", tt.name, err)
		}
	}
}
