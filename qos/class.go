package qos

import (
	"errors"
	"fmt"
)

// Class is one traffic class. The policy declares classes; the node copies
// them into this type.
type Class struct {
	// Name identifies the class ("interactive", "gpu", "bulk").
	Name string
	// DSCP is the 6-bit Differentiated Services code point the class's
	// packets carry (0..63, see ParseDSCP).
	DSCP uint8
	// Priority orders classes: a lower value is served first, as with tc
	// priorities (0 is the most urgent).
	Priority int
	// Rate caps the class at this many bytes per second; 0 means no cap.
	Rate int64
	// Burst is the token-bucket depth in bytes for Rate; 0 picks a default
	// (Options.ChunkSize, or a tenth of a second of Rate if that is larger).
	// It must be 0 when Rate is 0.
	Burst int64
}

// ErrInvalidClass reports a class configuration qos cannot use.
var ErrInvalidClass = errors.New("invalid class")

// ValidateClasses checks a class list: at least one class, unique non-empty
// names, DSCP values in 0..63, non-negative rates and bursts, and no burst
// without a rate. Errors wrap ErrInvalidClass.
func ValidateClasses(classes []Class) error {
	if len(classes) == 0 {
		return fmt.Errorf("qos: no classes: %w", ErrInvalidClass)
	}
	seen := make(map[string]bool, len(classes))
	for i, c := range classes {
		switch {
		case c.Name == "":
			return fmt.Errorf("qos: class %d: empty name: %w", i, ErrInvalidClass)
		case seen[c.Name]:
			return fmt.Errorf("qos: class %q: duplicate name: %w", c.Name, ErrInvalidClass)
		case c.DSCP > MaxDSCP:
			return fmt.Errorf("qos: class %q: dscp %d out of range 0..63: %w", c.Name, c.DSCP, ErrInvalidClass)
		case c.Rate < 0:
			return fmt.Errorf("qos: class %q: negative rate %d: %w", c.Name, c.Rate, ErrInvalidClass)
		case c.Burst < 0:
			return fmt.Errorf("qos: class %q: negative burst %d: %w", c.Name, c.Burst, ErrInvalidClass)
		case c.Burst > 0 && c.Rate == 0:
			return fmt.Errorf("qos: class %q: burst without rate: %w", c.Name, ErrInvalidClass)
		}
		seen[c.Name] = true
	}
	return nil
}
