package pool_test

import (
	"bytes"
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/overlay/forward"
	"github.com/gpumesh/gpumesh/pool"
)

// TestForwarder: a forwarder whose rule names a pool places each new
// client connection on a host (the one with the fewest of the pool's
// connections), and every call on a connection, a session's included,
// stays on that host. When the host is lost its connections are closed;
// the client's next connection goes to another host, where the old
// session does not exist.
func TestForwarder(t *testing.T) {
	nw, hosts := simNet(t, time.Millisecond, "gpu-a", "gpu-b", "gpu-c")
	p := startPool(t, fast("tag:gpu", nw))
	fwd, err := forward.Start(forward.Config{
		Dial:  p.DialContext,
		Rules: []forward.Rule{{Listen: "127.0.0.1:0", Target: net.JoinHostPort("tag:gpu", "50051")}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer fwd.Close()
	var d net.Dialer
	ctx := t.Context()
	clients := make([]*gpusvc.Client, 3)
	seen := map[string]int{}
	for i := range clients {
		c, err := gpusvc.NewClient(fwd.Addr(0).String(), d.DialContext)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients[i] = c
		dev, err := c.Devices(ctx)
		if err != nil {
			t.Fatal(err)
		}
		seen[dev.GetHost()]++
	}
	if len(seen) != 3 {
		t.Fatalf("3 connections went to %v, want one on each host", seen)
	}

	// A session's calls share its client's connection, so its host.
	c := clients[0]
	dev, _ := c.Devices(ctx)
	home := dev.GetHost()
	s, err := c.OpenSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	buf, err := c.Upload(ctx, s.ID, "", 4, bytes.NewReader([]byte{1, 2, 3, 4}))
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		var out bytes.Buffer
		if _, err := c.Read(ctx, s.ID, buf, 0, 0, &out); err != nil || !bytes.Equal(out.Bytes(), []byte{1, 2, 3, 4}) {
			t.Fatalf("read back %v, %v", out.Bytes(), err)
		}
	}

	hosts[home].Vanish()
	waitHosts(t, p, home+" to be lost", state(home, pool.StateDown))
	// The connection was closed under the client; it reconnects, through
	// the forwarder, to another host, which has no such session.
	var err2 error
	for range 3 {
		var out bytes.Buffer
		_, err2 = c.Read(ctx, s.ID, buf, 0, 0, &out)
		if status.Code(err2) != codes.Unavailable {
			break
		}
	}
	if status.Code(err2) != codes.NotFound {
		t.Errorf("reading the lost host's session through a new connection: %v, want NotFound", err2)
	}
	dev, err = c.Devices(ctx)
	if err != nil || dev.GetHost() == home {
		t.Errorf("after %s was lost, the client's connection is on %q (%v)", home, dev.GetHost(), err)
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := p.DialContext(cctx, "udp", ""); err == nil {
		t.Error("DialContext(udp) succeeded")
	}
}
