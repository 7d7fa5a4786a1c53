package qos

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// Writer returns an io.Writer that splits each Write into chunks of at most
// ChunkSize(class) bytes and admits every chunk through s before writing it
// to w. An unknown class is admitted as the default class (see Wait).
func (s *Scheduler) Writer(w io.Writer, className string) io.Writer {
	return &writer{s: s, w: w, class: className}
}

type writer struct {
	s     *Scheduler
	w     io.Writer
	class string
}

func (w *writer) Write(p []byte) (int, error) {
	return w.s.write(context.Background(), w.w, func() string { return w.class }, p)
}

// write admits p chunk by chunk, each in the class classOf names when it
// is admitted, and writes it to dst.
func (s *Scheduler) write(ctx context.Context, dst io.Writer, classOf func() string, p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		class := classOf()
		n := min(len(p), s.ChunkSize(class))
		release, err := s.Wait(ctx, class, n)
		if err != nil {
			return written, err
		}
		m, err := dst.Write(p[:n])
		release()
		written += m
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

// Conn wraps c so that its writes are admitted through s as class (see
// Writer); reads pass through. Close and an expired write deadline also end
// a write waiting for admission, which then fails with net.ErrClosed or
// os.ErrDeadlineExceeded.
//
// The returned connection has a method SetClass(name string), safe to call
// concurrently with Write: the chunks admitted after it are admitted and
// counted in the class name ("" is the default class). Callers that hold a
// net.Conn reach it through the interface{ SetClass(string) }.
func (s *Scheduler) Conn(c net.Conn, className string) net.Conn {
	ctx, cancel := context.WithCancel(context.Background())
	return &conn{Conn: c, s: s, class: className, ctx: ctx, cancel: cancel}
}

type conn struct {
	net.Conn
	s      *Scheduler
	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc

	mu       sync.Mutex
	class    string    // the class of the next chunk; guarded by mu
	deadline time.Time // write deadline; guarded by mu
}

// SetClass moves the connection to the class name: its next chunks are
// admitted and counted there. "" is the default class.
func (c *conn) SetClass(name string) {
	c.mu.Lock()
	c.class = name
	c.mu.Unlock()
}

// Class returns the class the connection's next chunk is admitted in, as
// set (not resolved: an unknown name is admitted as the default class).
func (c *conn) Class() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.class
}

func (c *conn) Write(p []byte) (int, error) {
	ctx := c.ctx
	c.mu.Lock()
	dl := c.deadline
	c.mu.Unlock()
	if !dl.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl)
		defer cancel()
	}
	n, err := c.s.write(ctx, c.Conn, c.Class, p)
	switch {
	case err == nil:
	case errors.Is(err, context.Canceled) && c.ctx.Err() != nil:
		err = &net.OpError{Op: "write", Net: "qos", Addr: c.RemoteAddr(), Err: net.ErrClosed}
	case errors.Is(err, context.DeadlineExceeded):
		err = &net.OpError{Op: "write", Net: "qos", Addr: c.RemoteAddr(), Err: os.ErrDeadlineExceeded}
	}
	return n, err
}

func (c *conn) Close() error {
	c.cancel()
	return c.Conn.Close()
}

func (c *conn) SetDeadline(t time.Time) error {
	c.setWriteDeadline(t)
	return c.Conn.SetDeadline(t)
}

func (c *conn) SetWriteDeadline(t time.Time) error {
	c.setWriteDeadline(t)
	return c.Conn.SetWriteDeadline(t)
}

func (c *conn) setWriteDeadline(t time.Time) {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
}
