package worker

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// newShm makes an anonymous shared memory file of size bytes, mapped here;
// the worker maps the same file from the descriptor it inherits.
func newShm(size int) (*os.File, []byte, error) {
	fd, err := unix.MemfdCreate("gpumesh-gpu", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, nil, fmt.Errorf("worker: memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "gpumesh-gpu-shm")
	if err := f.Truncate(int64(size)); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("worker: memfd: %w", err)
	}
	m, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("worker: mmap: %w", err)
	}
	return f, m, nil
}

func unmapShm(m []byte) {
	if m != nil {
		unix.Munmap(m)
	}
}

// MapShared maps the shared memory a worker inherited as fd.
func MapShared(fd, size int) ([]byte, error) {
	m, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("worker: map shared memory fd %d: %w", fd, err)
	}
	return m, nil
}
