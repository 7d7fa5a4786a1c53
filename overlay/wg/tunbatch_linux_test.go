//go:build linux

package wg

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestTUNBatchWarning: a TUN device without offloads, as a kernel that
// lacks them gives, hands wireguard-go one packet per read, and Up warns
// about it; the device with offloads this kernel gives batches, and Up
// stays quiet. Either carries traffic.
func TestTUNBatchWarning(t *testing.T) {
	for _, tc := range []struct {
		name       string
		noOffloads bool
		wantBatch  int
	}{{"offloads", false, 128}, {"no offloads", true, 1}} {
		t.Run(tc.name, func(t *testing.T) {
			nsGPU, nsLaptop := newNS(t), newNS(t)
			if _, err := os.Stat("/dev/net/tun"); err != nil {
				t.Skip("no /dev/net/tun")
			}
			ipGPU, ipLaptop := vethPair(t, nsGPU, nsLaptop)
			gpu := newMember(t, "gpu-host", "10.77.0.1")
			laptop := newMember(t, "laptop", "10.77.0.2")
			var mu sync.Mutex
			var logs []string
			logf := func(format string, args ...any) {
				mu.Lock()
				defer mu.Unlock()
				logs = append(logs, fmt.Sprintf(format, args...))
			}
			srv := startNodeIn(t, nsGPU, Config{Mode: ModeTUN, TUNName: "gmwtun0", tunNoOffloads: tc.noOffloads, Logf: logf,
				File: mustParse(t, "gpu.conf", conf(gpu, 51820, peerOf{m: laptop, endpoint: netip.AddrPortFrom(ipLaptop, 51820).String()}))})
			cli := startNodeIn(t, nsLaptop, Config{File: mustParse(t, "laptop.conf",
				conf(laptop, 51820, peerOf{m: gpu, endpoint: netip.AddrPortFrom(ipGPU, 51820).String()}))})

			srv.mu.Lock()
			batch := srv.kernel.dev.BatchSize()
			srv.mu.Unlock()
			if batch != tc.wantBatch {
				t.Fatalf("TUN batch size %d, want %d", batch, tc.wantBatch)
			}
			mu.Lock()
			warned := strings.Contains(strings.Join(logs, "\n"), "has no offloads")
			mu.Unlock()
			if warned != tc.noOffloads {
				t.Errorf("warned about missing offloads: %v, want %v; logs:\n%s", warned, tc.noOffloads, strings.Join(logs, "\n"))
			}

			var ln net.Listener
			if err := nsGPU.do(func() (err error) { ln, err = srv.Listen("tcp", ":7000"); return err }); err != nil {
				t.Fatal(err)
			}
			echoServer(t, ln, nil)
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			c, err := cli.Dial(ctx, "tcp", "gpu-host:7000")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			echoOnce(t, c, strings.Repeat("batch ", 2000))
		})
	}
}
