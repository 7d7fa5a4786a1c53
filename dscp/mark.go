package dscp

import (
	"errors"
	"fmt"
	"syscall"
)

// ErrNone reports an attempt to mark a socket with None: there is nothing
// to set. Callers that mean "leave it unmarked" skip the call.
var ErrNone = errors.New("dscp: no code point to mark with")

// Mark sets c on the socket behind sc (a *net.UDPConn, *net.TCPConn, ...)
// as MarkFD does.
func Mark(sc syscall.Conn, c Code) error {
	if err := check(c); err != nil {
		return err
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return fmt.Errorf("dscp: mark %s: %w", c, err)
	}
	var merr error
	if err := rc.Control(func(fd uintptr) { merr = MarkFD(int(fd), c) }); err != nil {
		return fmt.Errorf("dscp: mark %s: %w", c, err)
	}
	return merr
}

// check refuses None and out-of-range codes before a socket is touched.
func check(c Code) error {
	switch {
	case c == None:
		return ErrNone
	case !c.Valid():
		return fmt.Errorf("dscp: mark %s: %w", c, ErrBad)
	}
	return nil
}
