//go:build !linux

package qos

import (
	"errors"
	"fmt"
	"syscall"
)

// setSocketDSCP is implemented on Linux only.
func setSocketDSCP(c syscall.Conn, dscp uint8) error {
	return fmt.Errorf("%w: kernel sockets: %w", ErrNoInnerDSCP, errors.ErrUnsupported)
}
