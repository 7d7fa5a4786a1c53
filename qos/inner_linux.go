package qos

import (
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// setSocketDSCP marks a kernel socket as MarkConn does (markFD). A socket
// that is not IPv4 or IPv6 (a Unix socket), or a syscall.Conn that is no
// socket at all, gives ErrNoInnerDSCP.
func setSocketDSCP(c syscall.Conn, dscp uint8) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var merr error
	if err := rc.Control(func(fd uintptr) { merr = markFD(int(fd), dscp) }); err != nil {
		return err
	}
	if errors.Is(merr, errors.ErrUnsupported) || errors.Is(merr, unix.ENOTSOCK) {
		return fmt.Errorf("%w: %w", ErrNoInnerDSCP, merr)
	}
	return merr
}
