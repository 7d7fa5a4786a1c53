package gpusvc

import (
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

// Write copies p into buffer at byte offset off, in DefaultChunkBytes
// chunks sent straight from p.
func (c *Client) Write(ctx context.Context, session, buffer, off uint64, p []byte) error {
	_, err := c.writeStream(ctx, &pb.WriteRequest{Session: session, Buffer: buffer, Offset: off}, sliceChunks(p), nil)
	return err
}

// WriteFrom copies r, to its end, into buffer at byte offset off,
// streaming DefaultChunkBytes chunks, and returns the bytes written.
func (c *Client) WriteFrom(ctx context.Context, session, buffer, off uint64, r io.Reader) (int64, error) {
	res, err := c.writeStream(ctx, &pb.WriteRequest{Session: session, Buffer: buffer, Offset: off}, readerChunks(r), nil)
	if err != nil {
		return 0, err
	}
	return int64(res.GetBytes()), nil
}

// Upload allocates a buffer on gpu ("" for the default) holding p, in one
// stream, and returns its ID in the session.
func (c *Client) Upload(ctx context.Context, session uint64, gpu string, p []byte) (uint64, error) {
	if len(p) == 0 {
		return 0, errors.New("gpusvc: upload of 0 bytes")
	}
	res, err := c.writeStream(ctx, &pb.WriteRequest{Session: session, AllocBytes: uint64(len(p)), Gpu: gpu}, sliceChunks(p), nil)
	if err != nil {
		return 0, err
	}
	return res.GetBuffer(), nil
}

// UploadFrom allocates an n-byte buffer on gpu and fills it from r in one
// stream. The buffer joins the session only if all n bytes arrive: when r
// ends early or fails, or ctx ends, the host frees it.
func (c *Client) UploadFrom(ctx context.Context, session uint64, gpu string, n uint64, r io.Reader) (uint64, error) {
	if n == 0 {
		return 0, errors.New("gpusvc: upload of 0 bytes")
	}
	cr := &countReader{r: io.LimitReader(r, int64(n))}
	first := &pb.WriteRequest{Session: session, AllocBytes: n, Gpu: gpu}
	res, err := c.writeStream(ctx, first, readerChunks(cr), func() error {
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
	st, err := c.api.Read(ctx, &pb.ReadRequest{Session: session, Buffer: buffer, Offset: off, Length: n})
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

// chunks yields a write's data chunk by chunk; io.EOF (with or without a
// last chunk) ends it.
type chunks func() ([]byte, error)

func sliceChunks(p []byte) chunks {
	return func() ([]byte, error) {
		n := min(len(p), DefaultChunkBytes)
		chunk := p[:n]
		p = p[n:]
		if len(p) == 0 {
			return chunk, io.EOF
		}
		return chunk, nil
	}
}

func readerChunks(r io.Reader) chunks {
	// Send encodes the message before it returns, so one chunk buffer
	// serves the whole stream.
	buf := make([]byte, DefaultChunkBytes)
	return func() ([]byte, error) {
		n, err := io.ReadFull(r, buf)
		if err == io.ErrUnexpectedEOF {
			err = io.EOF
		}
		if err != nil && err != io.EOF {
			err = fmt.Errorf("gpusvc: write: reading the source: %w", err)
		}
		return buf[:n], err
	}
}

// writeStream sends first, then the chunks; check, if set, must pass
// before the stream is completed. Any failure cancels the stream, which
// the host sees as an unfinished write.
func (c *Client) writeStream(ctx context.Context, first *pb.WriteRequest, next chunks, check func() error) (*pb.WriteResponse, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.api.Write(ctx)
	if err != nil {
		return nil, err
	}
	msg := first
	for sent := false; ; sent = true {
		data, nerr := next()
		if nerr != nil && nerr != io.EOF {
			return nil, nerr
		}
		if len(data) > 0 || !sent {
			msg.Data = data
			if err := st.Send(msg); err != nil {
				if errors.Is(err, io.EOF) {
					// The host ended the stream; its status says why.
					_, err = st.CloseAndRecv()
				}
				return nil, err
			}
			msg = &pb.WriteRequest{}
		}
		if nerr == io.EOF {
			break
		}
	}
	if check != nil {
		if err := check(); err != nil {
			return nil, err
		}
	}
	return st.CloseAndRecv()
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
