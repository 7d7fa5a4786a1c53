//go:build !linux

package dscp

import (
	"errors"
	"fmt"
	"syscall"
)

// MarkFD is implemented on Linux only.
func MarkFD(fd int, c Code) error {
	return fmt.Errorf("dscp: mark %s: %w", c, errors.ErrUnsupported)
}

// TOSOf is implemented on Linux only.
func TOSOf(sc syscall.Conn) (byte, error) {
	return 0, fmt.Errorf("dscp: read tos: %w", errors.ErrUnsupported)
}

// Sockets is implemented on Linux only.
func Sockets() (map[string]bool, error) {
	return nil, fmt.Errorf("dscp: list sockets: %w", errors.ErrUnsupported)
}

// MarkUDPPort is implemented on Linux only.
func MarkUDPPort(port uint16, c Code, skip map[string]bool) (int, error) {
	return 0, fmt.Errorf("dscp: mark udp port %d: %w", port, errors.ErrUnsupported)
}

// Check is implemented on Linux only.
func Check(c Code) (byte, error) {
	return 0, fmt.Errorf("dscp: check marking: %w", errors.ErrUnsupported)
}
