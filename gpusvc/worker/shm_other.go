//go:build !linux

package worker

import (
	"errors"
	"os"
)

var errNoShm = errors.New("worker: shared memory needs Linux")

// newShm: elsewhere bulk data goes through the socket.
func newShm(int) (*os.File, []byte, error) { return nil, nil, errNoShm }

func unmapShm([]byte) {}

// MapShared is not available off Linux.
func MapShared(int, int) ([]byte, error) { return nil, errNoShm }
