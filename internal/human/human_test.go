package human

import (
	"encoding/json"
	"testing"
	"time"
)

func TestBytes(t *testing.T) {
	tests := []struct {
		n    int64
		want string
	}{
		{0, "0B"}, {512, "512B"}, {1023, "1023B"}, {1024, "1.0KiB"}, {1536, "1.5KiB"},
		{12 << 20, "12.0MiB"}, {5 << 30, "5.0GiB"}, {-2048, "-2.0KiB"},
	}
	for _, tt := range tests {
		if got := Bytes(tt.n); got != tt.want {
			t.Errorf("Bytes(%d) = %q, want %q", tt.n, got, tt.want)
		}
	}
	if got := Bytes(uint64(3 << 40)); got != "3.0TiB" {
		t.Errorf("Bytes(3TiB) = %q", got)
	}
}

func TestRate(t *testing.T) {
	tests := []struct {
		r    float64
		want string
	}{
		{0, "0B/s"}, {12_500_000, "11.9MiB/s"}, {7130316, "6.8MiB/s"}, {999.6, "1000B/s"},
	}
	for _, tt := range tests {
		if got := Rate(tt.r); got != tt.want {
			t.Errorf("Rate(%v) = %q, want %q", tt.r, got, tt.want)
		}
	}
}

func TestDuration(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"}, {999, "999ns"}, {150 * time.Microsecond, "150µs"}, {1234567, "1.23ms"},
		{2 * time.Millisecond, "2ms"}, {1500 * time.Millisecond, "1.5s"}, {123456 * time.Millisecond, "2m3s"},
		{-1234567, "-1.23ms"}, {174665 * time.Nanosecond, "175µs"},
	}
	for _, tt := range tests {
		if got := Duration(tt.d); got != tt.want {
			t.Errorf("Duration(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

// TestMillis: the numbers carry no float noise into JSON.
func TestMillis(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{174665 * time.Nanosecond, "0.175"}, {150 * time.Microsecond, "0.15"}, {3 * time.Second, "3000"}, {0, "0"},
	}
	for _, tt := range tests {
		b, _ := json.Marshal(Millis(tt.d))
		if string(b) != tt.want {
			t.Errorf("Millis(%v) marshals as %s, want %s", tt.d, b, tt.want)
		}
	}
	if b, _ := json.Marshal(RoundMillis(0.17466500000000001)); string(b) != "0.175" {
		t.Errorf("RoundMillis marshals as %s", b)
	}
}
