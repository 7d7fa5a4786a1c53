//go:build !linux

package tc

import (
	"errors"
	"fmt"

	"github.com/gpumesh/gpumesh/qos"
)

// Install is implemented on Linux only.
func Install(cfg Config) (*Shaper, error) {
	return nil, fmt.Errorf("tc: install: %w", errors.ErrUnsupported)
}

// Probe is implemented on Linux only.
func Probe(cfg ProbeConfig) (Support, error) {
	return nil, fmt.Errorf("tc: probe: %w", errors.ErrUnsupported)
}

// Stats is implemented on Linux only.
func (s *Shaper) Stats() ([]ClassStats, error) {
	return nil, fmt.Errorf("tc: stats: %w", errors.ErrUnsupported)
}

// Close is implemented on Linux only.
func (s *Shaper) Close() error { return nil }

// Route is implemented on Linux only.
func (s *Shaper) Route(routes []PeerRoute) error {
	return fmt.Errorf("tc: route: %w", errors.ErrUnsupported)
}

// SetClasses is implemented on Linux only.
func (s *Shaper) SetClasses(classes []qos.Class) error {
	return fmt.Errorf("tc: set classes: %w", errors.ErrUnsupported)
}

// Report is implemented on Linux only.
func (s *Shaper) Report() Report { return Report{} }
