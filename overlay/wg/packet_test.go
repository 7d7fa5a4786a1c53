package wg

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// TestListenPacket: two netstack nodes exchange UDP datagrams on their
// overlay addresses. A sender that keeps the endpoint's send buffer full
// never hangs (gonet's own WriteTo can miss the wakeup that the buffer has
// drained), and a write deadline still ends a blocked write.
func TestListenPacket(t *testing.T) {
	gpu := newMember(t, "gpu-host", "10.77.0.1")
	laptop := newMember(t, "laptop", "10.77.0.2")
	srv := startNode(t, Config{File: mustParse(t, "gpu.conf", conf(gpu, 0, peerOf{m: laptop}))})
	cli := startNode(t, Config{File: mustParse(t, "laptop.conf",
		conf(laptop, 0, peerOf{m: gpu, endpoint: fmt.Sprintf("127.0.0.1:%d", srv.ListenPort())}))})
	dst, err := srv.ListenPacket("udp4", ":9000")
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if got := dst.LocalAddr().String(); got != "10.77.0.1:9000" {
		t.Errorf("listening on %s, want the overlay address", got)
	}
	src, err := cli.ListenPacket("udp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()

	var wg sync.WaitGroup
	got := make(chan []byte, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 2048)
		first := true
		for {
			n, _, err := dst.ReadFrom(buf)
			if err != nil {
				return
			}
			if first {
				got <- append([]byte(nil), buf[:n]...)
				first = false
			}
		}
	}()
	defer wg.Wait()
	defer dst.Close()

	// 20 000 datagrams as fast as they go: the send buffer fills and
	// drains over and over.
	msg := bytes.Repeat([]byte("q"), 1200)
	done := make(chan error, 1)
	go func() {
		for range 20000 {
			if _, err := src.WriteTo(msg, dst.LocalAddr()); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("write: %v", err)
		}
	case <-time.After(2 * time.Minute): // a failure guard
		t.Fatal("a writer blocked for two minutes on a full send buffer")
	}
	if b := <-got; !bytes.Equal(b, msg) {
		t.Errorf("received %d bytes, not the datagram sent", len(b))
	}

	// A past deadline ends a write that would block.
	src.SetWriteDeadline(time.Now().Add(-time.Second))
	var werr error
	for range 100000 {
		if _, werr = src.WriteTo(msg, dst.LocalAddr()); werr != nil {
			break
		}
	}
	if !errors.Is(werr, os.ErrDeadlineExceeded) {
		t.Errorf("write past its deadline: %v, want a deadline error", werr)
	}
	var ne net.Error
	if werr != nil && (!errors.As(werr, &ne) || !ne.Timeout()) {
		t.Errorf("deadline error %v is not a net.Error timeout", werr)
	}
}
