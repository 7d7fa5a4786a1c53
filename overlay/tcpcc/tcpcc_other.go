//go:build !linux

package tcpcc

import (
	"errors"
	"syscall"
)

var errNotLinux = errors.New("tcpcc: setting a socket's congestion control is built for Linux only")

// Choose leaves the default where gpumesh cannot set it; asking for a
// name is an error.
func Choose(want string) (string, error) {
	if want == "" || want == System {
		return "", nil
	}
	return "", errNotLinux
}

// Offered is false off Linux.
func Offered(string) bool { return false }

// Available is empty off Linux.
func Available() []string { return nil }

// Default is unknown off Linux.
func Default() string { return "" }

// Other is "" off Linux.
func Other() string { return "" }

// Set fails off Linux unless cc is "".
func Set(_ uintptr, cc string) error {
	if cc == "" {
		return nil
	}
	return errNotLinux
}

// Control sets nothing off Linux unless asked to, and then fails.
func Control(cc string) func(network, address string, c syscall.RawConn) error {
	return func(string, string, syscall.RawConn) error { return Set(0, cc) }
}

// Of fails off Linux.
func Of(syscall.Conn) (string, error) { return "", errNotLinux }
