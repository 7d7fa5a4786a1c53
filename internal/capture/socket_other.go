//go:build !linux

package capture

import (
	"errors"
	"fmt"
	"runtime"
)

// socket exists only on Linux (AF_PACKET).
type socket struct{}

func open(netns, iface string) (*socket, error) {
	return nil, fmt.Errorf("capture: %w on %s (needs Linux AF_PACKET)", errors.ErrUnsupported, runtime.GOOS)
}

func (*socket) read(func(Direction, uint16, []byte)) error { return nil }
func (*socket) stop()                                      {}
func (*socket) drops() (uint64, error)                     { return 0, nil }
func (*socket) close() error                               { return nil }
