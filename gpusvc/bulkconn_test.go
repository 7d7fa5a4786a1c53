package gpusvc_test

import (
	"bytes"
	"context"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc"
)

// countedConn counts the bytes a client sends on one overlay connection.
type countedConn struct {
	net.Conn
	sent atomic.Int64
}

func (c *countedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.sent.Add(int64(n))
	return n, err
}

// TestBulkOnItsOwnConnection checks that Write and Read travel on a
// connection of their own, opened on the first of them, and that calls on
// the shared stream never pay for it: the connection that carries Compute
// and the session calls sees none of the bulk bytes.
func TestBulkOnItsOwnConnection(t *testing.T) {
	w := startSessionWorld(t, "laptop")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var mu sync.Mutex
	var conns []*countedConn
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := w.nodes["laptop"].Dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		cc := &countedConn{Conn: c}
		mu.Lock()
		conns = append(conns, cc)
		mu.Unlock()
		return cc, nil
	}
	opened := func() []*countedConn {
		mu.Lock()
		defer mu.Unlock()
		return append([]*countedConn(nil), conns...)
	}
	c, err := gpusvc.NewClient("gpu-host:"+strconv.Itoa(gpusvc.DefaultPort), dial)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	if _, err := c.Compute(ctx, "relu", f32([]int64{2}, -1, 2)); err != nil {
		t.Fatal(err)
	}
	sess, err := c.OpenSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const size = 4 << 20
	id, err := c.Alloc(ctx, sess.ID, "", size)
	if err != nil {
		t.Fatal(err)
	}
	if got := opened(); len(got) != 1 {
		t.Fatalf("%d connections before any bulk transfer; want 1", len(got))
	}
	calls := opened()[0]
	before := calls.sent.Load()

	data := randomBytes(size, 7)
	if n, err := c.Write(ctx, sess.ID, id, 0, bytes.NewReader(data)); err != nil || n != size {
		t.Fatalf("write: %d, %v", n, err)
	}
	var back bytes.Buffer
	if n, err := c.Read(ctx, sess.ID, id, 0, 0, &back); err != nil || n != size {
		t.Fatalf("read: %d, %v", n, err)
	}
	if !bytes.Equal(back.Bytes(), data) {
		t.Fatal("the buffer came back different")
	}

	got := opened()
	if len(got) != 2 {
		t.Fatalf("%d connections after Write and Read; want 2 (the calls' and the bulk one)", len(got))
	}
	if d := calls.sent.Load() - before; d > 64<<10 {
		t.Errorf("the calls' connection carried %d bytes during a %d-byte Write; want the bulk bytes on their own connection", d, size)
	}
	if s := got[1].sent.Load(); s < size {
		t.Errorf("the bulk connection carried %d bytes; want at least the %d written", s, size)
	}

	// Calls on the shared stream still work while a transfer runs.
	done := make(chan error, 1)
	go func() {
		_, err := c.Write(ctx, sess.ID, id, 0, bytes.NewReader(data))
		done <- err
	}()
	if _, err := c.Compute(ctx, "relu", f32([]int64{2}, -1, 2)); err != nil {
		t.Fatalf("compute during a write: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := c.CloseSession(ctx, sess.ID); err != nil {
		t.Fatal(err)
	}
}
