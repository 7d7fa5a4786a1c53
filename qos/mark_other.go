//go:build !linux

package qos

import (
	"errors"
	"fmt"
	"syscall"
)

// MarkUDPPort is implemented on Linux only.
func MarkUDPPort(port uint16, dscp uint8) (int, error) {
	return 0, fmt.Errorf("qos: mark udp port %d: %w", port, errors.ErrUnsupported)
}

// MarkConn is implemented on Linux only.
func MarkConn(c syscall.Conn, dscp uint8) error {
	return fmt.Errorf("qos: mark conn: %w", errors.ErrUnsupported)
}

// ConnTOS is implemented on Linux only.
func ConnTOS(c syscall.Conn) (byte, error) {
	return 0, fmt.Errorf("qos: conn tos: %w", errors.ErrUnsupported)
}

// CheckMarking is implemented on Linux only.
func CheckMarking(dscp uint8) (byte, error) {
	return 0, fmt.Errorf("qos: check marking: %w", errors.ErrUnsupported)
}
