package wanlab

import (
	"context"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"
)

// New starts a lab for a test or benchmark and closes it at cleanup. It
// skips tb unless it runs as root on Linux with ip(8) and /dev/net/tun.
func New(tb testing.TB, cfg Config) *Lab {
	tb.Helper()
	switch {
	case runtime.GOOS != "linux":
		tb.Skip("wanlab: needs Linux (network namespaces, TUN)")
	case os.Geteuid() != 0:
		tb.Skip("wanlab: needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		tb.Skip("wanlab: needs ip (iproute2)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		tb.Skip("wanlab: needs /dev/net/tun")
	}
	if cfg.Logf == nil {
		cfg.Logf = tb.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := Start(ctx, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { l.Close() })
	return l
}
