package forward_test

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/gpumesh/gpumesh/overlay/forward"
)

// TestUnix forwards a Unix socket to an echo server standing in for the
// overlay: bytes go both ways, a half-close passes, the dial names the
// rule's target, a stale socket is replaced, and Close removes the socket.
func TestUnix(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	echo, stop := echoServer(t)
	defer stop()
	dir := t.TempDir()
	path := filepath.Join(dir, "gpumesh.sock")
	// A socket left behind by a process that died.
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()

	dialed := make(chan string, 1)
	f, err := forward.StartUnix(forward.Config{
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dialed <- addr
			var d net.Dialer
			return d.DialContext(ctx, network, echo)
		},
		Rules:         []forward.Rule{{Listen: path, Target: "gpu-host:50051"}},
		ProbeInterval: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != forward.UnixSocketMode {
		t.Errorf("socket mode %v; want a socket with %v", fi.Mode(), forward.UnixSocketMode)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, "hello through a unix socket"); err != nil {
		t.Fatal(err)
	}
	c.(*net.UnixConn).CloseWrite()
	got, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(got) != "hello through a unix socket" {
		t.Fatalf("echo = %q, %v", got, err)
	}
	if addr := <-dialed; addr != "gpu-host:50051" {
		t.Errorf("dialed %q; want the rule's target gpu-host:50051", addr)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close = %v; want net.ErrClosed", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket still there after Close: %v", err)
	}
}

func TestUnixRefuses(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "not-a-socket")
	if err := os.WriteFile(file, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		listen string
		want   string
	}{
		{"relative path", "gpumesh.sock", "absolute path"},
		{"a regular file", file, "not a socket"},
		{"no such directory", filepath.Join(dir, "missing", "gpumesh.sock"), "listen"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := forward.StartUnix(forward.Config{Dial: refuseDial, Rules: []forward.Rule{{Listen: tc.listen, Target: "gpu-host:50051"}}})
			if err == nil {
				f.Close()
				t.Fatalf("StartUnix(%s) started", tc.listen)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("StartUnix(%s) = %v; want an error containing %q", tc.listen, err, tc.want)
			}
		})
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "keep me" {
		t.Errorf("the regular file was touched: %q, %v", b, err)
	}
}
