package wg

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"
)

// A benchmarked data path: a listener on the server side and a dialer on
// the client side. The server speaks a one-byte protocol: 'b' drains the
// connection and answers one byte at EOF (bulk), 'p' echoes (ping-pong).
type benchPath struct {
	name  string
	setup func(b *testing.B) (ln net.Listener, dial func() (net.Conn, error))
}

type benchResult struct {
	mbps  float64 // bulk MB/s
	p50us float64 // ping-pong round trip, µs
}

// benchPaths runs bulk and ping-pong over each path, then reports each
// path's ratios against the first path (the raw baseline), and the bulk
// ratio of each pair in pairs (path, against path) measured in the same run.
func benchPaths(b *testing.B, paths []benchPath, pairs ...[2]string) {
	results := map[string]*benchResult{}
	for _, p := range paths {
		b.Run(p.name, func(b *testing.B) {
			ln, dial := p.setup(b)
			benchServe(b, ln)
			res := &benchResult{}
			results[p.name] = res
			b.Run("bulk", func(b *testing.B) { res.mbps = benchBulk(b, dial) })
			b.Run("pingpong", func(b *testing.B) { res.p50us = benchPingPong(b, dial) })
		})
	}
	b.Run("ratios", func(b *testing.B) {
		base := results[paths[0].name]
		for range b.N {
		}
		for _, p := range paths[1:] {
			r := results[p.name]
			if base == nil || r == nil || base.mbps == 0 || base.p50us == 0 {
				continue
			}
			b.ReportMetric(r.mbps/base.mbps, p.name+"/"+paths[0].name+"-bulk")
			b.ReportMetric(r.p50us/base.p50us, p.name+"/"+paths[0].name+"-p50")
		}
		for _, pair := range pairs {
			if x, y := results[pair[0]], results[pair[1]]; x != nil && y != nil && y.mbps > 0 {
				b.ReportMetric(x.mbps/y.mbps, pair[0]+"/"+pair[1]+"-bulk")
			}
		}
	})
}

func benchServe(b *testing.B, ln net.Listener) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				var mode [1]byte
				if _, err := io.ReadFull(c, mode[:]); err != nil {
					return
				}
				if mode[0] == 'b' {
					io.Copy(io.Discard, c)
					c.Write([]byte{1})
					return
				}
				io.Copy(c, c)
			}()
		}
	}()
	b.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

func benchBulk(b *testing.B, dial func() (net.Conn, error)) float64 {
	c, err := dial()
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 128<<10)
	buf[0] = 'b'
	if _, err := c.Write(buf[:1]); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	// Count only what the server received.
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	if _, err := io.ReadFull(c, buf[:1]); err != nil {
		b.Fatalf("bulk end: %v", err)
	}
	b.StopTimer()
	return float64(b.N) * float64(len(buf)) / b.Elapsed().Seconds() / 1e6
}

func benchPingPong(b *testing.B, dial func() (net.Conn, error)) float64 {
	c, err := dial()
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte{'p'}); err != nil {
		b.Fatal(err)
	}
	msg := make([]byte, 64)
	rtts := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, msg); err != nil {
			b.Fatal(err)
		}
		rtts = append(rtts, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(rtts)
	p50 := float64(rtts[len(rtts)/2].Nanoseconds()) / 1e3
	b.ReportMetric(p50, "p50-µs")
	return p50
}

// BenchmarkWGLoopback needs no root: raw TCP on 127.0.0.1 against two
// netstack nodes whose WireGuard packets cross 127.0.0.1.
func BenchmarkWGLoopback(b *testing.B) {
	benchPaths(b, []benchPath{
		{"raw", func(b *testing.B) (net.Listener, func() (net.Conn, error)) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			return ln, func() (net.Conn, error) { return net.Dial("tcp", ln.Addr().String()) }
		}},
		{"netstack", func(b *testing.B) (net.Listener, func() (net.Conn, error)) {
			gpu := newMember(b, "gpu-host", "10.77.0.1")
			laptop := newMember(b, "laptop", "10.77.0.2")
			quiet := func(string, ...any) {}
			srv := startNode(b, Config{Logf: quiet, File: mustParse(b, "gpu.conf", conf(gpu, 0, peerOf{m: laptop}))})
			cli := startNode(b, Config{Logf: quiet, File: mustParse(b, "laptop.conf",
				conf(laptop, 0, peerOf{m: gpu, endpoint: fmt.Sprintf("127.0.0.1:%d", srv.ListenPort())}))})
			ln, err := srv.Listen("tcp", ":7000")
			if err != nil {
				b.Fatal(err)
			}
			return ln, func() (net.Conn, error) { return cli.Dial(context.Background(), "tcp", "gpu-host:7000") }
		}},
	})
}
