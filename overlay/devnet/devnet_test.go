package devnet_test

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/overlay/devnet"
)

// TestTailnet joins two nodes, connects by name over the tailnet, and checks
// that the server learns the client's identity from the tailnet.
func TestTailnet(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tn, err := devnet.Start(devnet.Options{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer tn.Close()

	host, err := tn.Join(ctx, "gpu-host", "tag:gpu")
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	laptop, err := tn.Join(ctx, "laptop")
	if err != nil {
		t.Fatal(err)
	}
	defer laptop.Close()

	ln, err := host.Listen("tcp", ":7000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()

	c, err := laptop.Dial(ctx, "tcp", "gpu-host:7000")
	if err != nil {
		t.Fatalf("dial gpu-host by name: %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	sc := <-accepted
	if sc == nil {
		t.Fatal("no connection accepted")
	}
	defer sc.Close()
	buf := make([]byte, 2)
	if _, err := io.ReadFull(sc, buf); err != nil || string(buf) != "hi" {
		t.Fatalf("read %q, %v", buf, err)
	}

	id, err := host.WhoIs(ctx, sc.RemoteAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	if id.Node != "laptop" || id.StableID == "" || len(id.Addrs) == 0 || id.User == "" {
		t.Errorf("WhoIs = %+v; want node laptop with a stable ID, user and addresses", id)
	}
	if _, err := host.WhoIs(ctx, "192.0.2.1:1"); !errors.Is(err, overlay.ErrUnknownPeer) {
		t.Errorf("WhoIs(unknown) err = %v; want ErrUnknownPeer", err)
	}

	// The laptop sees the host's tag the other way round.
	lc, err := laptop.WhoIs(ctx, c.RemoteAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	if !lc.HasTag("tag:gpu") || lc.User != "" {
		t.Errorf("host identity = %+v; want tag:gpu and no user", lc)
	}

	if err := laptop.Close(); err != nil {
		t.Errorf("first Close: %v", err)
	}
	if err := laptop.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close = %v; want net.ErrClosed", err)
	}
}
