package forward

import (
	"context"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
)

// UnixSocketMode is the mode of a socket StartUnix creates: anyone who can
// reach its directory may connect, so the directory's permissions and where
// it is mounted (a Kubernetes agent mounts it into one container) decide who
// calls the GPU host as this node.
const UnixSocketMode fs.FileMode = 0o666

// StartUnix is Start for rules whose Listen is the absolute path of a Unix
// socket instead of a loopback address: each connection accepted there goes
// to the rule's Target, with the same dial timeout and probing. A stale
// socket at the path (left by a process that died) is replaced; any other
// file there is an error. Close removes the sockets. A half-built start is
// undone.
func StartUnix(cfg Config) (_ *Forwarder, err error) {
	log, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	for _, r := range cfg.Rules {
		if !filepath.IsAbs(r.Listen) {
			return nil, fmt.Errorf("forward: rule %s: a Unix socket needs an absolute path", r)
		}
		if _, _, err := net.SplitHostPort(r.Target); err != nil {
			return nil, fmt.Errorf("forward: rule %s: target: %w", r, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &Forwarder{cfg: cfg, log: log, ctx: ctx, cancel: cancel, conns: make(map[net.Conn]connInfo)}
	defer func() {
		if err != nil {
			cancel()
			for _, ln := range f.lns {
				ln.Close()
			}
		}
	}()
	for _, r := range cfg.Rules {
		ln, err := listenUnix(r.Listen)
		if err != nil {
			return nil, fmt.Errorf("forward: rule %s: %w", r, err)
		}
		f.lns = append(f.lns, ln)
		f.forwards = append(f.forwards, Forward{Rule: r, Addrs: []net.Addr{ln.Addr()}})
	}
	for i, r := range cfg.Rules {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.accept(f.lns[i], i, r)
		}()
		if cfg.ProbeInterval > 0 {
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				f.probe(i, r)
			}()
		}
	}
	return f, nil
}

// listenUnix listens on a Unix socket at path, replacing a stale socket
// but no other kind of file.
func listenUnix(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("listen: %s exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("listen: remove stale socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	if err := os.Chmod(path, UnixSocketMode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen: %w", err)
	}
	return ln, nil
}
