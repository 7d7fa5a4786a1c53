package gpusvc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	pb "github.com/gpumesh/gpumesh/gpusvc/gpumeshpb"
)

// Session is a session open on the host. Its buffers live until it is
// closed or left unused for IdleTimeout.
type Session struct {
	ID          uint64
	IdleTimeout time.Duration
}

// OpenSession opens a session, bound to this node's overlay identity.
func (c *Client) OpenSession(ctx context.Context) (Session, error) {
	res, err := c.api.OpenSession(ctx, &pb.OpenSessionRequest{})
	if err != nil {
		return Session{}, err
	}
	return Session{ID: res.GetSession(), IdleTimeout: time.Duration(res.GetIdleTimeoutMs()) * time.Millisecond}, nil
}

// CloseSession closes a session; the host frees (and zeroes) its buffers.
func (c *Client) CloseSession(ctx context.Context, session uint64) error {
	_, err := c.api.CloseSession(ctx, &pb.CloseSessionRequest{Session: session})
	return err
}

// Alloc reserves n zeroed bytes on gpu ("" for the default) and returns
// the buffer's ID in the session.
func (c *Client) Alloc(ctx context.Context, session uint64, gpu string, n uint64) (uint64, error) {
	res, err := c.api.Alloc(ctx, &pb.AllocRequest{Session: session, Gpu: gpu, Bytes: n})
	if err != nil {
		return 0, err
	}
	return res.GetBuffer(), nil
}

// Free releases a buffer; the host zeroes it.
func (c *Client) Free(ctx context.Context, session, buffer uint64) error {
	_, err := c.api.Free(ctx, &pb.FreeRequest{Session: session, Buffer: buffer})
	return err
}

// Write copies r, to its end, into buffer at byte offset off, streaming
// chunks of DefaultChunkBytes or, when the caller's max_request is
// smaller, chunks that fit it, and returns the bytes written. A
// *bytes.Reader's slice is sent as it is, without a copy.
func (c *Client) Write(ctx context.Context, session, buffer, off uint64, r io.Reader) (int64, error) {
	res, err := c.writeStream(ctx, &pb.WriteRequest{Session: session, Buffer: buffer, Offset: off}, r, nil)
	if err != nil {
		return 0, err
	}
	return int64(res.GetBytes()), nil
}

// Upload allocates an n-byte buffer on gpu ("" for the default) and fills
// it from r in one stream, returning the buffer's ID in the session. The
// buffer joins the session only if all n bytes arrive: when r ends early
// or fails, or ctx ends, the host frees it.
func (c *Client) Upload(ctx context.Context, session uint64, gpu string, n uint64, r io.Reader) (uint64, error) {
	if n == 0 {
		return 0, errors.New("gpusvc: upload of 0 bytes")
	}
	first := &pb.WriteRequest{Session: session, AllocBytes: n, Gpu: gpu}
	if br, ok := r.(*bytes.Reader); ok && uint64(br.Len()) == n {
		res, err := c.writeStream(ctx, first, br, nil)
		if err != nil {
			return 0, err
		}
		return res.GetBuffer(), nil
	}
	cr := &countReader{r: io.LimitReader(r, int64(n))}
	res, err := c.writeStream(ctx, first, cr, func() error {
		if cr.n != int64(n) {
			return fmt.Errorf("gpusvc: upload: the reader ended after %d of %d bytes", cr.n, n)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return res.GetBuffer(), nil
}

// Read streams n bytes of buffer from byte offset off into w (n = 0: to
// the buffer's end) and returns the bytes copied.
func (c *Client) Read(ctx context.Context, session, buffer, off, n uint64, w io.Writer) (int64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.bulkAPI.Read(ctx, &pb.ReadRequest{Session: session, Buffer: buffer, Offset: off, Length: n})
	if err != nil {
		return 0, err
	}
	var total int64
	for {
		res, err := st.Recv()
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
		k, err := w.Write(res.GetData())
		total += int64(k)
		if err != nil {
			return total, fmt.Errorf("gpusvc: read buffer %d: %w", buffer, err)
		}
	}
}

// writeStream sends first, then r's bytes in chunks; check, if set, must
// pass before the stream is completed. Any failure cancels the stream,
// which the host sees as an unfinished write.
func (c *Client) writeStream(ctx context.Context, first *pb.WriteRequest, r io.Reader, check func() error) (*pb.WriteResponse, error) {
	l, err := c.Limits(ctx)
	if err != nil {
		return nil, err
	}
	chunk := chunkFor(l)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.bulkAPI.Write(ctx)
	if err != nil {
		return nil, err
	}
	w := &chunkSender{st: st, msg: first, chunk: chunk}
	if br, ok := r.(*bytes.Reader); ok {
		// WriteTo hands over the reader's own slice: no copy.
		_, err = br.WriteTo(w)
	} else {
		// Send encodes the message before it returns, so one chunk buffer
		// serves the whole stream.
		buf := make([]byte, chunk)
		for err == nil {
			var n int
			n, err = io.ReadFull(r, buf)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					err = werr
				}
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			err = nil
		}
	}
	if w.err != nil {
		return nil, w.err
	}
	if err != nil {
		return nil, fmt.Errorf("gpusvc: write: reading the source: %w", err)
	}
	if !w.sent {
		if err := w.send(nil); err != nil {
			return nil, err
		}
	}
	if check != nil {
		if err := check(); err != nil {
			return nil, err
		}
	}
	return st.CloseAndRecv()
}

// writeHeader bounds what a Write message carries besides its data.
const writeHeader = 512

// chunkFor is the Write chunk size for a caller's limits: DefaultChunkBytes,
// or less so that a message fits the caller's max_request.
func chunkFor(l *pb.Limits) int {
	limit := l.GetMaxRequestBytes()
	if limit <= 0 || limit >= DefaultChunkBytes+writeHeader {
		return DefaultChunkBytes
	}
	if limit > 2*writeHeader {
		return int(limit - writeHeader)
	}
	return int(max(limit/2, 1))
}

// chunkSender writes a Write stream's messages, chunk bytes at most each;
// the first carries the header.
type chunkSender struct {
	st    pb.GPU_WriteClient
	msg   *pb.WriteRequest // the next message
	chunk int
	sent  bool
	err   error // the stream's failure
}

func (w *chunkSender) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		n := min(len(p), w.chunk)
		if err := w.send(p[:n]); err != nil {
			return total - len(p), err
		}
		p = p[n:]
	}
	return total, nil
}

func (w *chunkSender) send(data []byte) error {
	w.msg.Data = data
	if err := w.st.Send(w.msg); err != nil {
		if errors.Is(err, io.EOF) {
			// The host ended the stream; its status says why.
			_, err = w.st.CloseAndRecv()
		}
		w.err = err
		return err
	}
	w.sent = true
	w.msg = &pb.WriteRequest{}
	return nil
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
