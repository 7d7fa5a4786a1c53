package qos

import (
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/gpumesh/gpumesh/dscp"
)

// setSocketDSCP marks a kernel socket as dscp.Mark does. A socket that is
// not IPv4 or IPv6 (a Unix socket), or a syscall.Conn that is no socket at
// all, gives ErrNoInnerDSCP.
func setSocketDSCP(c syscall.Conn, code dscp.Code) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var merr error
	if err := rc.Control(func(fd uintptr) { merr = dscp.MarkFD(int(fd), code) }); err != nil {
		return err
	}
	if errors.Is(merr, errors.ErrUnsupported) || errors.Is(merr, unix.ENOTSOCK) {
		return fmt.Errorf("%w: %w", ErrNoInnerDSCP, merr)
	}
	return merr
}
