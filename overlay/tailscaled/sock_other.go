//go:build !linux

package tailscaled

import (
	"errors"
	"syscall"
)

var errNotLinux = errors.New("the system tailscaled overlay is built for Linux only")

func (n *Node) control(string, string, syscall.RawConn) error { return errNotLinux }

func (n *Node) controlListen(string, string, syscall.RawConn) error { return errNotLinux }

func (n *Node) controlDevice(string, string, syscall.RawConn) error { return errNotLinux }
