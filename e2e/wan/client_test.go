package wan

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"google.golang.org/grpc"

	"github.com/gpumesh/gpumesh/gpusvc"
)

const envHostAddr = "GPUMESH_WAN_HOSTADDR" // the host's overlay IPv4 address

// op is one measurement the client runs.
type op struct {
	// Kind is ping (raw TCP round trips), raw (TCP bulk), quic (QUIC
	// bulk), write or read (gpumesh resident buffers), or p99
	// (interactive Compute calls).
	Kind string `json:"kind"`
	// Dir is the raw and QUIC transfers' direction: up (laptop to host,
	// as Write) or down (as Read).
	Dir string `json:"dir,omitempty"`
	// Bytes is how much a bulk operation moves at most.
	Bytes int64 `json:"bytes,omitempty"`
	// Cap is the time a bulk operation or a p99 series may take.
	Cap time.Duration `json:"cap,omitempty"`
	// Stripes is how many connections a bulk operation uses in parallel,
	// each moving an equal part (0 means 1).
	Stripes int `json:"stripes,omitempty"`
	// Calls is how many round trips (ping) or calls (p99) to time.
	Calls int `json:"calls,omitempty"`
	// Load is what runs during a p99 series: "" nothing, "same" a bulk
	// Read on the same gpumesh client (one connection), "sep" a bulk Read
	// on a client of its own (another connection).
	Load string `json:"load,omitempty"`
	// Window is the gRPC flow-control window of write and read clients,
	// bytes; 0 keeps gpusvc's.
	Window int32 `json:"window,omitempty"`
}

// result is what an operation measured.
type result struct {
	Bytes    int64   `json:"bytes,omitempty"`
	Seconds  float64 `json:"seconds,omitempty"`
	Calls    int     `json:"calls,omitempty"`
	P50us    int64   `json:"p50us,omitempty"`
	P99us    int64   `json:"p99us,omitempty"`
	MaxUs    int64   `json:"maxus,omitempty"`
	BulkMBps float64 `json:"bulkmbps,omitempty"`
	Lost     uint64  `json:"lost,omitempty"` // QUIC: packets its loss detection declared lost
	Err      string  `json:"err,omitempty"`
}

// MBps is the bulk rate in MB/s (10^6 bytes).
func (r result) MBps() float64 {
	if r.Seconds == 0 {
		return 0
	}
	return float64(r.Bytes) / r.Seconds / 1e6
}

// client is the laptop's side: a long-lived gpumesh client for
// interactive calls, a session with a resident buffer, a QUIC transport.
type client struct {
	ov   overlayNode
	host netip.Addr
	main *gpusvc.Client
	sess uint64
	quic *quicClient

	buf     uint64 // the resident buffer, 0 before the first bulk operation
	bufSize int64
	zeros   []byte // what Write sends
}

func newClient(ctx context.Context, ov overlayNode) (_ *client, err error) {
	host, err := netip.ParseAddr(os.Getenv(envHostAddr))
	if err != nil {
		return nil, fmt.Errorf("client: host address: %w", err)
	}
	c := &client{ov: ov, host: host}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	if c.main, err = c.dial(0); err != nil {
		return nil, err
	}
	sess, err := c.main.OpenSession(ctx)
	if err != nil {
		return nil, err
	}
	c.sess = sess.ID
	var self netip.Addr
	for _, a := range ov.Addrs() {
		if a.Is4() {
			self = a
		}
	}
	pc, err := ov.ListenPacket("udp4", netip.AddrPortFrom(self, 0).String())
	if err != nil {
		return nil, err
	}
	c.quic = &quicClient{tr: &quic.Transport{Conn: pc}, dst: net.UDPAddrFromAddrPort(netip.AddrPortFrom(host, quicPort))}
	return c, nil
}

func (c *client) close() {
	if c.quic != nil {
		c.quic.tr.Close()
		c.quic.tr.Conn.Close()
	}
	if c.main != nil {
		c.main.Close()
	}
}

// dial returns a new gpumesh client (its own connection), with a gRPC
// window of window bytes if not 0.
func (c *client) dial(window int32) (*gpusvc.Client, error) {
	var opts []grpc.DialOption
	if window > 0 {
		opts = append(opts, grpc.WithInitialWindowSize(window), grpc.WithInitialConnWindowSize(window))
	}
	return gpusvc.NewClient(net.JoinHostPort(c.host.String(), strconv.Itoa(gpusvc.DefaultPort)), c.ov.Dial, opts...)
}

// run runs o and reports its result, or its error in the result.
func (c *client) run(ctx context.Context, o op) result {
	o.Stripes = max(o.Stripes, 1)
	var r result
	var err error
	switch o.Kind {
	case "ping":
		r, err = c.ping(ctx, o)
	case "raw", "quic":
		r, err = c.bulk(ctx, o)
	case "write", "read":
		r, err = c.gpumesh(ctx, o)
	case "p99":
		r, err = c.interactive(ctx, o)
	default:
		err = fmt.Errorf("unknown operation %q", o.Kind)
	}
	if err != nil {
		r.Err = err.Error()
	}
	return r
}

// ping times raw TCP round trips of 64 bytes.
func (c *client) ping(ctx context.Context, o op) (result, error) {
	conn, err := c.ov.Dial(ctx, "tcp", netip.AddrPortFrom(c.host, rawPort).String())
	if err != nil {
		return result{}, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(o.Cap + time.Minute)) // a failure guard
	if _, err := conn.Write([]byte{rawPing}); err != nil {
		return result{}, err
	}
	msg := make([]byte, 64)
	var rtts []time.Duration
	for range o.Calls {
		t0 := time.Now()
		if _, err := conn.Write(msg); err != nil {
			return result{}, err
		}
		if _, err := io.ReadFull(conn, msg); err != nil {
			return result{}, err
		}
		rtts = append(rtts, time.Since(t0))
	}
	return latencies(rtts), nil
}

// bulk moves o.Bytes over o.Stripes raw TCP connections or QUIC
// connections (one stream each), all at once.
func (c *client) bulk(ctx context.Context, o op) (result, error) {
	var streams []halfCloser
	defer func() {
		for _, s := range streams {
			s.Close()
		}
	}()
	var conns []*quic.Conn
	defer func() {
		for _, qc := range conns {
			qc.CloseWithError(0, "")
		}
	}()
	dctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for range o.Stripes {
		if o.Kind == "raw" {
			conn, err := c.ov.Dial(dctx, "tcp", netip.AddrPortFrom(c.host, rawPort).String())
			if err != nil {
				return result{}, err
			}
			hc, ok := conn.(halfCloser)
			if !ok {
				conn.Close()
				return result{}, fmt.Errorf("a %T cannot close its sending side alone", conn)
			}
			streams = append(streams, hc)
			continue
		}
		qc, err := c.quic.dial(dctx)
		if err != nil {
			return result{}, fmt.Errorf("quic dial: %w", err)
		}
		conns = append(conns, qc)
		st, err := qc.OpenStreamSync(dctx)
		if err != nil {
			return result{}, err
		}
		streams = append(streams, quicStream{st})
	}
	part := o.Bytes / int64(o.Stripes)
	deadline := time.Now().Add(o.Cap)
	var total atomic.Int64
	var longest atomic.Int64
	errs := make([]error, len(streams))
	var wg sync.WaitGroup
	for i, s := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, d, err := rawTransfer(s, o.Dir, part, deadline)
			total.Add(n)
			for cur := longest.Load(); int64(d) > cur && !longest.CompareAndSwap(cur, int64(d)); cur = longest.Load() {
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	r := result{Bytes: total.Load(), Seconds: time.Duration(longest.Load()).Seconds()}
	for _, qc := range conns {
		r.Lost += qc.ConnectionStats().PacketsLost
	}
	return r, errors.Join(errs...)
}

// gpumesh writes or reads o.Bytes of the resident buffer over o.Stripes
// new clients (connections), each an equal part at its own offset. A
// read stops at the cap; a write must finish within three caps.
func (c *client) gpumesh(ctx context.Context, o op) (result, error) {
	if err := c.ensureBuffer(ctx, o.Bytes); err != nil {
		return result{}, err
	}
	clients := make([]*gpusvc.Client, o.Stripes)
	defer func() {
		for _, cl := range clients {
			if cl != nil {
				cl.Close()
			}
		}
	}()
	for i := range clients {
		cl, err := c.dial(o.Window)
		if err != nil {
			return result{}, err
		}
		clients[i] = cl
		if _, err := cl.Devices(ctx); err != nil { // connected before timing
			return result{}, err
		}
	}
	limit := o.Cap
	if o.Kind == "write" {
		limit = 3 * o.Cap
	}
	tctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	part := o.Bytes / int64(o.Stripes)
	var total atomic.Int64
	errs := make([]error, len(clients))
	t0 := time.Now()
	var wg sync.WaitGroup
	for i, cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			off := uint64(int64(i) * part)
			if o.Kind == "write" {
				n, err := cl.Write(tctx, c.sess, c.buf, off, bytes.NewReader(c.zeros[:part]))
				total.Add(n)
				errs[i] = err
				return
			}
			w := &counter{}
			_, err := cl.Read(tctx, c.sess, c.buf, off, uint64(part), w)
			total.Add(w.n.Load())
			if tctx.Err() == nil {
				errs[i] = err
			}
		}()
	}
	wg.Wait()
	return result{Bytes: total.Load(), Seconds: min(time.Since(t0), limit).Seconds()}, errors.Join(errs...)
}

// ensureBuffer makes the resident buffer at least n bytes.
func (c *client) ensureBuffer(ctx context.Context, n int64) error {
	if n <= c.bufSize {
		return nil
	}
	if c.buf != 0 {
		if err := c.main.Free(ctx, c.sess, c.buf); err != nil {
			return err
		}
		c.buf, c.bufSize = 0, 0
	}
	id, err := c.main.Alloc(ctx, c.sess, "", uint64(n))
	if err != nil {
		return err
	}
	c.buf, c.bufSize, c.zeros = id, n, make([]byte, n)
	return nil
}

// interactive times o.Calls saxpy calls on the long-lived client (or as
// many as fit in o.Cap), with a bulk Read running as o.Load says.
func (c *client) interactive(ctx context.Context, o op) (result, error) {
	var bulk *counter
	if o.Load != "" {
		if err := c.ensureBuffer(ctx, 8<<20); err != nil {
			return result{}, err
		}
		bc := c.main
		if o.Load == "sep" {
			cl, err := c.dial(0)
			if err != nil {
				return result{}, err
			}
			defer cl.Close()
			bc = cl
		}
		bctx, stop := context.WithCancel(ctx)
		bulk = &counter{flowing: make(chan struct{})}
		done := make(chan error, 1)
		go func() {
			for {
				if _, err := bc.Read(bctx, c.sess, c.buf, 0, 0, bulk); err != nil {
					done <- err
					return
				}
			}
		}()
		defer func() {
			stop()
			<-done
		}()
		select {
		case <-bulk.flowing:
		case err := <-done:
			return result{}, fmt.Errorf("bulk read: %w", err)
		case <-time.After(time.Minute):
			return result{}, errors.New("the bulk read moved less than 1 MiB in a minute")
		}
	}
	var lat []time.Duration
	deadline := time.Now().Add(o.Cap)
	for len(lat) < o.Calls && time.Now().Before(deadline) {
		t0 := time.Now()
		if _, err := c.main.Compute(ctx, "saxpy", saxpyArgs()...); err != nil {
			return result{}, err
		}
		lat = append(lat, time.Since(t0))
	}
	r := latencies(lat)
	if bulk != nil {
		r.BulkMBps = float64(bulk.n.Load()) / time.Since(bulk.start()).Seconds() / 1e6
	}
	return r, nil
}

// latencies summarises round-trip times.
func latencies(d []time.Duration) result {
	if len(d) == 0 {
		return result{}
	}
	slices.Sort(d)
	return result{Calls: len(d), P50us: d[len(d)/2].Microseconds(), P99us: d[len(d)*99/100].Microseconds(),
		MaxUs: d[len(d)-1].Microseconds()}
}

// counter counts what is written to it; flowing, if set, closes once
// 1 MiB has arrived.
type counter struct {
	n       atomic.Int64
	flowing chan struct{}
	once    sync.Once
	t0      atomic.Int64 // unix nanoseconds of the first write
}

func (w *counter) Write(p []byte) (int, error) {
	w.t0.CompareAndSwap(0, time.Now().UnixNano())
	if w.n.Add(int64(len(p))) >= 1<<20 && w.flowing != nil {
		w.once.Do(func() { close(w.flowing) })
	}
	return len(p), nil
}

func (w *counter) start() time.Time { return time.Unix(0, w.t0.Load()) }
