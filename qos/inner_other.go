//go:build !linux

package qos

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/gpumesh/gpumesh/dscp"
)

// setSocketDSCP is implemented on Linux only.
func setSocketDSCP(c syscall.Conn, code dscp.Code) error {
	return fmt.Errorf("%w: kernel sockets: %w", ErrNoInnerDSCP, errors.ErrUnsupported)
}
