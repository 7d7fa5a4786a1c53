//go:build !linux

package tailscaled

import (
	"errors"
	"syscall"
)

var errNotLinux = errors.New("the system tailscaled overlay is built for Linux only")

func chooseCongestion(string) (string, error) { return "", errNotLinux }

func (n *Node) control(string, string, syscall.RawConn) error { return errNotLinux }

func (n *Node) controlListen(string, string, syscall.RawConn) error { return errNotLinux }

func (n *Node) controlDevice(string, string, syscall.RawConn) error { return errNotLinux }

// CongestionOf reports the congestion control of a TCP connection.
func CongestionOf(syscall.Conn) (string, error) { return "", errNotLinux }
