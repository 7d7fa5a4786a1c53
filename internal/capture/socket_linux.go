package capture

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// snapLen is how much of each frame the kernel hands over: enough for
	// an IPv6 header with extension headers and a full TCP header.
	snapLen = 256
	// rcvBuf is the socket's receive buffer, so that a burst does not
	// outrun the reader (drops show in Stats).
	rcvBuf = 16 << 20
	// maxDrain bounds how many queued frames stop reads before returning.
	maxDrain = 1 << 16
)

// socket is an AF_PACKET socket bound to one interface, in cooked mode
// (SOCK_DGRAM: the link header is removed and the EtherType comes with
// the source address), so any link type decodes the same way.
type socket struct {
	f        *os.File
	rc       syscall.RawConn
	loopback bool
}

// open opens a socket on iface in the namespace at path netns ("" for the
// process's own).
func open(netns, iface string) (*socket, error) {
	if netns == "" {
		return openHere(iface)
	}
	type result struct {
		s   *socket
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// This thread enters the namespace and is never used again: the
		// goroutine ends with the thread locked, so the runtime retires it.
		runtime.LockOSThread()
		fd, err := unix.Open(netns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- result{err: fmt.Errorf("capture: open network namespace %s: %w", netns, err)}
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("capture: enter network namespace %s: %w", netns, err)}
			return
		}
		s, err := openHere(iface)
		if err != nil {
			err = fmt.Errorf("%w (in %s)", err, netns)
		}
		ch <- result{s, err}
	}()
	r := <-ch
	return r.s, r.err
}

// openHere opens the socket in the calling thread's network namespace.
func openHere(iface string) (_ *socket, err error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("capture: interface %s: %w", iface, err)
	}
	// Protocol 0: the socket receives nothing until it is bound to the
	// interface, so no frame from another interface slips in.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("capture: packet socket (needs CAP_NET_RAW): %w", err)
	}
	defer func() {
		if err != nil {
			unix.Close(fd)
		}
	}()
	// A one-instruction BPF program that keeps the first snapLen bytes.
	snap := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: snapLen}}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER,
		&unix.SockFprog{Len: uint16(len(snap)), Filter: &snap[0]}); err != nil {
		return nil, fmt.Errorf("capture: snap length filter: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvBuf); err != nil {
		// Without CAP_NET_ADMIN: as much as net.core.rmem_max allows.
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvBuf)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: netOrder(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
		return nil, fmt.Errorf("capture: bind to %s: %w", iface, err)
	}
	// A non-blocking descriptor makes a pollable File: reads wait in the
	// runtime's poller, and a read deadline stops them.
	f := os.NewFile(uintptr(fd), "capture:"+iface)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("capture: %w", err)
	}
	return &socket{f: f, rc: rc, loopback: ifi.Flags&net.FlagLoopback != 0}, nil
}

// read hands each frame to add until stop, then the frames already
// queued, and returns nil; or returns why reading failed.
func (s *socket) read(add func(Direction, uint16, []byte)) error {
	buf := make([]byte, snapLen)
	for {
		var n int
		var from unix.Sockaddr
		var rerr error
		err := s.rc.Read(func(fd uintptr) bool {
			n, from, rerr = recvfrom(int(fd), buf, 0)
			return rerr != unix.EAGAIN
		})
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break // stop
		}
		if err == nil {
			err = rerr
		}
		if err != nil {
			return fmt.Errorf("capture: read %s: %w", s.f.Name(), err)
		}
		s.deliver(from, buf[:n], add)
	}
	var derr error
	err := s.rc.Control(func(fd uintptr) {
		for range maxDrain {
			n, from, err := recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
			if err != nil {
				if err != unix.EAGAIN {
					derr = err
				}
				return
			}
			s.deliver(from, buf[:n], add)
		}
	})
	if err = errors.Join(err, derr); err != nil {
		return fmt.Errorf("capture: drain %s: %w", s.f.Name(), err)
	}
	return nil
}

func recvfrom(fd int, buf []byte, flags int) (int, unix.Sockaddr, error) {
	for {
		n, from, err := unix.Recvfrom(fd, buf, flags)
		if err != unix.EINTR {
			return n, from, err
		}
	}
}

func (s *socket) deliver(from unix.Sockaddr, b []byte, add func(Direction, uint16, []byte)) {
	ll, ok := from.(*unix.SockaddrLinklayer)
	if !ok {
		return
	}
	dir := In
	if ll.Pkttype == unix.PACKET_OUTGOING {
		if s.loopback {
			return // seen again as it comes back in
		}
		dir = Out
	}
	add(dir, netOrder(ll.Protocol), b)
}

// stop makes read return after draining.
func (s *socket) stop() {
	if err := s.f.SetReadDeadline(time.Unix(1, 0)); err != nil {
		s.f.Close() // not pollable: closing ends the read instead
	}
}

// drops returns the frames the kernel dropped since the last call.
func (s *socket) drops() (uint64, error) {
	var st *unix.TpacketStats
	var gerr error
	if err := s.rc.Control(func(fd uintptr) {
		st, gerr = unix.GetsockoptTpacketStats(int(fd), unix.SOL_PACKET, unix.PACKET_STATISTICS)
	}); err != nil {
		return 0, fmt.Errorf("capture: statistics of %s: %w", s.f.Name(), err)
	}
	if gerr != nil {
		return 0, fmt.Errorf("capture: statistics of %s: %w", s.f.Name(), gerr)
	}
	return uint64(st.Drops), nil
}

func (s *socket) close() error {
	if err := s.f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("capture: close %s: %w", s.f.Name(), err)
	}
	return nil
}

// netOrder converts a 16-bit value between host and network byte order
// (the conversion is its own inverse).
func netOrder(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}
