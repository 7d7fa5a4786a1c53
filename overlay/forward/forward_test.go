package forward_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/gpumesh/gpumesh/overlay/forward"
)

func TestParseRule(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    forward.Rule
		wantErr string
	}{
		{in: "localhost:50051=gpu-host", want: forward.Rule{Listen: "localhost:50051", Target: "gpu-host:50051"}},
		{in: "localhost:6000=gpu-host:7000", want: forward.Rule{Listen: "localhost:6000", Target: "gpu-host:7000"}},
		{in: "50052=gpu-b", want: forward.Rule{Listen: "localhost:50052", Target: "gpu-b:50051"}},
		{in: "127.0.0.1:0=100.64.0.7", want: forward.Rule{Listen: "127.0.0.1:0", Target: "100.64.0.7:50051"}},
		{in: "[::1]:50051=[fd7a:115c:a1e0::1]:9000", want: forward.Rule{Listen: "[::1]:50051", Target: "[fd7a:115c:a1e0::1]:9000"}},
		{in: "[::1]:50051=fd7a:115c:a1e0::1", want: forward.Rule{Listen: "[::1]:50051", Target: "[fd7a:115c:a1e0::1]:50051"}},
		{in: "localhost:50051=gpu-host.tail1234.ts.net", want: forward.Rule{Listen: "localhost:50051", Target: "gpu-host.tail1234.ts.net:50051"}},
		{in: "gpu-host", wantErr: "want LISTEN=HOST[:PORT]"},
		{in: "=gpu-host", wantErr: "want LISTEN=HOST[:PORT]"},
		{in: "localhost:50051=", wantErr: "want LISTEN=HOST[:PORT]"},
		{in: "localhost=gpu-host", wantErr: "listen address"},
		{in: "localhost:99999=gpu-host", wantErr: "listen address: port"},
		{in: "localhost:50051=gpu-host:http", wantErr: "target: port"},
		{in: "localhost:50051=gpu-host:0", wantErr: "target port 0"},
		{in: "localhost:50051=:50051", wantErr: "needs a host"},
		{in: "localhost:50051=a=b", wantErr: "needs a host"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := forward.ParseRule(tc.in, 50051)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseRule(%q) = %v, %v; want error containing %q", tc.in, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseRule(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
			// A parsed rule reads back as itself.
			if again, err := forward.ParseRule(got.String(), 1); err != nil || again != got {
				t.Fatalf("ParseRule(%q) = %v, %v; want %v", got.String(), again, err, got)
			}
		})
	}
}

func FuzzParseRule(f *testing.F) {
	for _, s := range []string{"localhost:50051=gpu-host", "50052=gpu-b:7", "[::1]:0=fd7a::1", "a=b=c", "=", ":=:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := forward.ParseRule(s, 50051)
		if err != nil {
			return
		}
		if _, _, err := net.SplitHostPort(r.Listen); err != nil {
			t.Fatalf("ParseRule(%q).Listen = %q: %v", s, r.Listen, err)
		}
		if _, _, err := net.SplitHostPort(r.Target); err != nil {
			t.Fatalf("ParseRule(%q).Target = %q: %v", s, r.Target, err)
		}
		if again, err := forward.ParseRule(r.String(), 1); err != nil || again != r {
			t.Fatalf("ParseRule(%q) = %v; round trip gives %v, %v", s, r, again, err)
		}
	})
}

// refuseDial is a dial function for tests that never reach the overlay.
func refuseDial(context.Context, string, string) (net.Conn, error) {
	return nil, errors.New("no overlay in this test")
}

func TestLoopbackOnly(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	for _, tc := range []struct {
		listen string
		force  bool
		ok     bool
	}{
		{listen: "localhost:0", ok: true},
		{listen: "LocalHost:0", ok: true},
		{listen: "127.0.0.1:0", ok: true},
		{listen: "127.0.0.2:0", ok: true},
		{listen: "[::1]:0", ok: true},
		{listen: ":0"},
		{listen: "0.0.0.0:0"},
		{listen: "[::]:0"},
		{listen: "192.0.2.1:0"},
		{listen: "[::ffff:10.0.0.1]:0"},
		{listen: "gpu-box.example.com:0"},
		{listen: "0.0.0.0:0", force: true, ok: true},
		{listen: ":0", force: true, ok: true},
	} {
		t.Run(tc.listen, func(t *testing.T) {
			f, err := forward.Start(forward.Config{
				Dial:             refuseDial,
				Rules:            []forward.Rule{{Listen: tc.listen, Target: "gpu-host:50051"}},
				AllowNonLoopback: tc.force,
			})
			if !tc.ok {
				if !errors.Is(err, forward.ErrNotLoopback) {
					t.Fatalf("Start(%s) = %v; want ErrNotLoopback", tc.listen, err)
				}
				return
			}
			if err != nil {
				if strings.Contains(tc.listen, "::1") {
					t.Skipf("no IPv6 loopback here: %v", err)
				}
				t.Fatal(err)
			}
			defer f.Close()
			for _, a := range f.Forwards()[0].Addrs {
				ip := a.(*net.TCPAddr).AddrPort().Addr()
				if !tc.force && !ip.Unmap().IsLoopback() {
					t.Errorf("listening on %v, not loopback", a)
				}
			}
		})
	}
}

// TestNotReachableFromOtherInterfaces dials the loopback-only forwarder's
// port on the machine's other addresses: nothing answers there.
func TestNotReachableFromOtherInterfaces(t *testing.T) {
	f, err := forward.Start(forward.Config{Dial: refuseDial, Rules: []forward.Rule{{Listen: "localhost:0", Target: "gpu-host:50051"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	port := f.Addr(0).(*net.TCPAddr).Port
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	tried := 0
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, _ := netip.AddrFromSlice(ipn.IP)
		if ip.Unmap().IsLoopback() || ip.IsLinkLocalUnicast() {
			continue
		}
		tried++
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(ip.Unmap(), uint16(port)).String(), 2*time.Second)
		if err == nil {
			c.Close()
			t.Errorf("the forwarder answered on %s", ip)
		}
	}
	if tried == 0 {
		t.Log("no non-loopback address on this machine (a loopback-only namespace)")
	}
}

// echoServer stands in for the overlay: it echoes what it reads, then
// half-closes.
func echoServer(t *testing.T) (addr string, stop func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return ln.Addr().String(), func() { ln.Close(); wg.Wait() }
}

func TestSpliceAndClose(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	echo, stop := echoServer(t)
	defer stop()
	var mu sync.Mutex
	var dialed []string
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		dialed = append(dialed, addr)
		mu.Unlock()
		var d net.Dialer
		return d.DialContext(ctx, network, echo)
	}
	f, err := forward.Start(forward.Config{Dial: dial, Rules: []forward.Rule{
		{Listen: "127.0.0.1:0", Target: "gpu-a:50051"},
		{Listen: "127.0.0.1:0", Target: "gpu-b:9000"},
	}})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("echo with half-close", func(t *testing.T) {
		for i := range 2 {
			c, err := net.Dial("tcp", f.Addr(i).String())
			if err != nil {
				t.Fatal(err)
			}
			msg := bytes.Repeat([]byte("gpumesh "), 100_000) // larger than a splice buffer
			werr := make(chan error, 1)
			go func() {
				_, err := c.Write(msg)
				if err == nil {
					err = c.(*net.TCPConn).CloseWrite()
				}
				werr <- err
			}()
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatal(err)
			}
			if err := <-werr; err != nil {
				t.Fatal(err)
			}
			c.Close()
			if !bytes.Equal(got, msg) {
				t.Fatalf("echo returned %d bytes; want %d", len(got), len(msg))
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if strings.Join(dialed, " ") != "gpu-a:50051 gpu-b:9000" {
			t.Errorf("dialed %v; want gpu-a:50051 gpu-b:9000", dialed)
		}
	})

	t.Run("close ends open connections", func(t *testing.T) {
		c, err := net.Dial("tcp", f.Addr(0).String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// One round trip proves the connection is forwarded before Close.
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadAll(c); err != nil && !isReset(err) {
			t.Fatalf("read after Close: %v", err)
		}
		if err := f.Close(); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("second Close = %v; want net.ErrClosed", err)
		}
		if _, err := net.Dial("tcp", f.Addr(0).String()); err == nil {
			t.Fatal("the forwarder still accepts after Close")
		}
	})
}

func isReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "connection reset") || errors.Is(err, net.ErrClosed))
}

// TestDialFailureResets: when the overlay cannot reach the host, the local
// connection is reset at once rather than left hanging.
func TestDialFailureResets(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	f, err := forward.Start(forward.Config{Dial: refuseDial, Rules: []forward.Rule{{Listen: "localhost:0", Target: "gpu-host:50051"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, err := net.Dial("tcp", f.Addr(0).String())
	if err != nil {
		// The reset can arrive before connect(2) reports success.
		if !isReset(err) {
			t.Fatal(err)
		}
		return
	}
	defer c.Close()
	n, err := c.Read(make([]byte, 1))
	if n != 0 || err == nil {
		t.Fatalf("read from a forward whose dial failed = %d, %v; want an error", n, err)
	}
}

// TestDialTimeout: a dial that hangs (a host that vanished without a
// trace) is abandoned after DialTimeout.
func TestDialTimeout(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	hang := func(ctx context.Context, _, _ string) (net.Conn, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	f, err := forward.Start(forward.Config{Dial: hang, DialTimeout: 50 * time.Millisecond,
		Rules: []forward.Rule{{Listen: "localhost:0", Target: "gpu-host:50051"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, err := net.Dial("tcp", f.Addr(0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read succeeded; want the connection reset after the dial timeout")
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  forward.Config
		want string
	}{
		{"no dial", forward.Config{Rules: []forward.Rule{{Listen: "localhost:0", Target: "h:1"}}}, "dial function is required"},
		{"no rules", forward.Config{Dial: refuseDial}, "no rules"},
		{"bad target", forward.Config{Dial: refuseDial, Rules: []forward.Rule{{Listen: "localhost:0", Target: "h"}}}, "target"},
		{"bad port", forward.Config{Dial: refuseDial, Rules: []forward.Rule{{Listen: "localhost:x", Target: "h:1"}}}, "port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := forward.Start(tc.cfg)
			if err == nil {
				f.Close()
				t.Fatalf("Start succeeded; want an error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Start: %v; want it to contain %q", err, tc.want)
			}
		})
	}
}

// TestHalfBuiltStartUndone: when a later rule cannot listen, the earlier
// rules' listeners are closed again.
func TestHalfBuiltStartUndone(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	freeAddr := free.Addr().String()
	free.Close()
	_, err = forward.Start(forward.Config{Dial: refuseDial, Rules: []forward.Rule{
		{Listen: freeAddr, Target: "a:1"},
		{Listen: busy.Addr().String(), Target: "b:1"},
	}})
	if err == nil {
		t.Fatal("Start on a busy port succeeded")
	}
	ln, err := net.Listen("tcp", freeAddr)
	if err != nil {
		t.Fatalf("the first rule's port is still held after a failed Start: %v", err)
	}
	ln.Close()
}

// TestProbeResetsWhenHostVanishes: an open connection whose host stops
// answering (no FIN, no RST: it is just gone) is reset by the probe, and
// one to a host that answers is left alone.
func TestProbeResetsWhenHostVanishes(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	echo, stop := echoServer(t)
	defer stop()
	var gone atomic.Bool
	probed := make(chan struct{}, 1)
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if gone.Load() && addr == "gpu-b:50051" {
			select {
			case probed <- struct{}{}: // gpu-b probed after gpu-a vanished
			default:
			}
		}
		if gone.Load() && addr == "gpu-a:50051" {
			<-ctx.Done() // the host's packets go nowhere
			return nil, ctx.Err()
		}
		var d net.Dialer
		return d.DialContext(ctx, network, echo)
	}
	f, err := forward.Start(forward.Config{Dial: dial, DialTimeout: 20 * time.Millisecond, ProbeInterval: 10 * time.Millisecond,
		Rules: []forward.Rule{{Listen: "127.0.0.1:0", Target: "gpu-a:50051"}, {Listen: "127.0.0.1:0", Target: "gpu-b:50051"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	conns := make([]net.Conn, 2)
	for i := range conns {
		c, err := net.Dial("tcp", f.Addr(i).String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	gone.Store(true)
	if _, err := conns[0].Read(make([]byte, 1)); err == nil {
		t.Fatal("read on a connection to the vanished host succeeded")
	}
	// gpu-b answers its probes, and its connection stays.
	<-probed
	if _, err := conns[1].Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(conns[1], make([]byte, 1)); err != nil {
		t.Fatalf("connection to the host that still answers: %v", err)
	}
}
