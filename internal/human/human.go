// Package human formats quantities for people and for gpumesh's JSON:
// byte counts and rates in binary units ("1.5MiB", "12.0MiB/s"), durations
// to three significant digits ("150µs", "1.23ms", "2.5s"), and durations as
// milliseconds rounded to the microsecond for JSON fields named *_ms; and
// the nearest name to a typo (Closest), for error hints. cmd/gpumesh, diag,
// policy and dscp share it instead of keeping copies.
//
// It is a leaf: it imports only the standard library.
package human

import (
	"fmt"
	"math"
	"time"
)

// Bytes formats n bytes in binary units: "512B", "1.5KiB", "12.0MiB".
func Bytes[T int64 | uint64 | int](n T) string {
	if n < 0 {
		return "-" + Bytes(-int64(n))
	}
	const unit = 1024
	u := uint64(n)
	if u < unit {
		return fmt.Sprintf("%dB", u)
	}
	div, exp := uint64(unit), 0
	for m := u / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(u)/float64(div), "KMGTPE"[exp])
}

// Rate formats a rate of bytesPerSec bytes per second as Bytes does, with
// "/s": "12.0MiB/s".
func Rate(bytesPerSec float64) string {
	if math.IsNaN(bytesPerSec) || math.IsInf(bytesPerSec, 0) {
		return "-"
	}
	return Bytes(int64(math.Round(bytesPerSec))) + "/s"
}

// Duration formats d rounded to three significant digits: "150µs",
// "1.23ms", "2.5s", "2m3s".
func Duration(d time.Duration) string {
	a := d
	if a < 0 {
		a = -a
	}
	step := time.Duration(1)
	for a >= 1000*step && step < time.Second {
		step *= 10
	}
	return d.Round(step).String()
}

// Millis is d in milliseconds, rounded to the microsecond: the number a
// JSON field named *_ms carries (0.175, not 0.17466500000000001).
func Millis(d time.Duration) float64 {
	return float64(d.Round(time.Microsecond)/time.Microsecond) / 1000
}

// RoundMillis rounds a number of milliseconds to the microsecond, as
// Millis does.
func RoundMillis(ms float64) float64 { return math.Round(ms*1000) / 1000 }
