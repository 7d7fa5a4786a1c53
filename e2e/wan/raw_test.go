package wan

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// The raw service, on a TCP connection or a QUIC stream: the opening byte
// says what it is for.
//
//	'u': the peer uploads until it closes its side; the host answers with
//	     the byte count (8 bytes, big endian).
//	'd': the peer sends a byte count n; the host sends n bytes, then closes.
//	'p': echo, for round trips.
const (
	rawUpload   = 'u'
	rawDownload = 'd'
	rawPing     = 'p'
)

// serveRaw speaks the raw service on one connection or stream.
func serveRaw(c io.ReadWriteCloser) {
	defer c.Close()
	var mode [1]byte
	if _, err := io.ReadFull(c, mode[:]); err != nil {
		return
	}
	switch mode[0] {
	case rawUpload:
		// The count so far every 50 ms, and the total at the end, so that
		// an upload stopped at a deadline knows what arrived by then.
		var n atomic.Int64
		done := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(50 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-done:
					return
				case <-t.C:
					if binary.Write(c, binary.BigEndian, n.Load()) != nil {
						return
					}
				}
			}
		}()
		buf := make([]byte, 256<<10)
		for {
			k, err := c.Read(buf)
			n.Add(int64(k))
			if err != nil {
				break
			}
		}
		close(done)
		wg.Wait()
		binary.Write(c, binary.BigEndian, n.Load())
	case rawDownload:
		var n int64
		if binary.Read(c, binary.BigEndian, &n) != nil {
			return
		}
		buf := make([]byte, 256<<10)
		for n > 0 {
			k, err := c.Write(buf[:min(int64(len(buf)), n)])
			if err != nil {
				return
			}
			n -= int64(k)
		}
	case rawPing:
		io.Copy(c, c)
	}
}

// rawServer accepts raw-service connections until closed.
type rawServer struct {
	ln net.Listener
	wg sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{} // open connections; guarded by mu
	closed bool                  // guarded by mu
}

func newRawServer(ln net.Listener) *rawServer {
	return &rawServer{ln: ln, conns: map[net.Conn]struct{}{}}
}

// serve accepts until the listener closes, then waits for its connections.
func (s *rawServer) serve() {
	defer s.wg.Wait()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			serveRaw(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// close stops accepting and closes every open connection.
func (s *rawServer) close() {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.ln.Close()
}

// halfCloser is a connection or stream whose sending side closes alone.
type halfCloser interface {
	io.ReadWriteCloser
	CloseWrite() error
	SetReadDeadline(time.Time) error
}

// rawTransfer moves up to n bytes over c, starting now, in the raw
// service's direction dir ("up" or "down"), stopping at deadline; it
// returns the bytes the receiver got and the time they took. An upload
// stopped at the deadline counts what the host had received by then.
func rawTransfer(c halfCloser, dir string, n int64, deadline time.Time) (int64, time.Duration, error) {
	t0 := time.Now()
	if dir == "up" {
		if _, err := c.Write([]byte{rawUpload}); err != nil {
			return 0, 0, err
		}
		var got atomic.Int64
		done := make(chan error, 1)
		go func() {
			for {
				var v int64
				if err := binary.Read(c, binary.BigEndian, &v); err != nil {
					if errors.Is(err, io.EOF) {
						err = nil
					}
					done <- err
					return
				}
				got.Store(v)
			}
		}()
		buf := make([]byte, 64<<10)
		sent := int64(0)
		for sent < n && time.Now().Before(deadline) {
			k, err := c.Write(buf[:min(int64(len(buf)), n-sent)])
			if err != nil {
				c.Close()
				<-done
				return 0, 0, err
			}
			sent += int64(k)
		}
		if sent < n {
			v, d := got.Load(), time.Since(t0)
			c.Close()
			<-done
			return v, d, nil
		}
		if err := c.CloseWrite(); err != nil {
			return 0, 0, err
		}
		err := <-done
		return got.Load(), time.Since(t0), err
	}
	if _, err := c.Write(binary.BigEndian.AppendUint64([]byte{rawDownload}, uint64(n))); err != nil {
		return 0, 0, err
	}
	c.SetReadDeadline(deadline)
	var got int64
	buf := make([]byte, 256<<10)
	for got < n {
		k, err := c.Read(buf)
		got += int64(k)
		if isTimeout(err) || errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return got, time.Since(t0), err
		}
	}
	return got, time.Since(t0), nil
}

// isTimeout reports whether err is a read or write deadline passing.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}
