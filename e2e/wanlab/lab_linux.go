package wanlab

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// Do runs f on an OS thread inside the namespace. Sockets f opens belong
// to the namespace for their whole life, whichever thread uses them later.
func (ns Namespace) Do(f func() error) error {
	h, err := netns.GetFromName(ns.Name)
	if err != nil {
		return fmt.Errorf("wanlab: namespace %s: %w", ns.Name, err)
	}
	defer h.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(h); err != nil {
			errc <- fmt.Errorf("wanlab: enter %s: %w", ns.Name, err)
			return
		}
		err = f()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread() // else the thread dies with the goroutine
		}
		errc <- err
	}()
	return <-errc
}

// sysctl sets /proc/sys/KEY (dots for slashes) in the calling thread's namespace.
func sysctl(key, value string) error {
	path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", key, value, err)
	}
	return nil
}

// Lab is a running impaired-link lab.
type Lab struct {
	A, B, R Namespace

	cfg   Config
	stage *stage

	mu     sync.Mutex
	closed bool // guarded by mu
}

// Start creates the lab's namespaces, links and routes and starts its
// stage. It needs root and ip(8). A half-built lab is removed.
func Start(ctx context.Context, cfg Config) (_ *Lab, err error) {
	lines, err := newLines(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	id := fmt.Sprintf("wl%d%04d", os.Getpid()%100000, rand.IntN(10000))
	l := &Lab{
		A:   Namespace{Name: id + "-a", Addr: AddrA},
		B:   Namespace{Name: id + "-b", Addr: AddrB},
		R:   Namespace{Name: id + "-r", Addr: RouterA},
		cfg: cfg,
	}
	var made []Namespace
	defer func() {
		if err != nil {
			for _, ns := range made {
				exec.Command("ip", "netns", "del", ns.Name).Run()
			}
		}
	}()
	for _, ns := range []Namespace{l.A, l.B, l.R} {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := ip("netns", "add", ns.Name); err != nil {
			return nil, err
		}
		made = append(made, ns)
		if err := ns.Do(func() error {
			// IPv6 off: the overlay uses the lab's IPv4 addresses only.
			return errors.Join(sysctl("net.ipv6.conf.all.disable_ipv6", "1"), sysctl("net.ipv6.conf.default.disable_ipv6", "1"))
		}); err != nil {
			return nil, err
		}
		if err := ip("-n", ns.Name, "link", "set", "lo", "up"); err != nil {
			return nil, err
		}
	}
	steps := [][]string{
		{"link", "add", "wan0", "netns", l.A.Name, "type", "veth", "peer", "name", "wana", "netns", l.R.Name},
		{"link", "add", "wan0", "netns", l.B.Name, "type", "veth", "peer", "name", "wanb", "netns", l.R.Name},
		{"-n", l.A.Name, "addr", "add", AddrA.String() + "/24", "dev", "wan0"},
		{"-n", l.B.Name, "addr", "add", AddrB.String() + "/24", "dev", "wan0"},
		{"-n", l.R.Name, "addr", "add", RouterA.String() + "/24", "dev", "wana"},
		{"-n", l.R.Name, "addr", "add", RouterB.String() + "/24", "dev", "wanb"},
		{"-n", l.A.Name, "link", "set", "wan0", "up"},
		{"-n", l.B.Name, "link", "set", "wan0", "up"},
		{"-n", l.R.Name, "link", "set", "wana", "up"},
		{"-n", l.R.Name, "link", "set", "wanb", "up"},
		{"-n", l.A.Name, "route", "add", "default", "via", RouterA.String()},
		{"-n", l.B.Name, "route", "add", "default", "via", RouterB.String()},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return nil, err
		}
	}
	for _, ns := range []Namespace{l.A, l.B} {
		if err := ns.Do(func() error {
			// Each measurement starts from a fresh congestion state.
			return sysctl("net.ipv4.tcp_no_metrics_save", "1")
		}); err != nil {
			return nil, err
		}
	}
	var dev tun.Device
	if err := l.R.Do(func() error {
		// R forwards, without reverse-path checks: packets written into
		// the TUN device come from addresses routed elsewhere.
		for _, kv := range [][2]string{
			{"net.ipv4.ip_forward", "1"}, {"net.ipv4.conf.all.rp_filter", "0"}, {"net.ipv4.conf.default.rp_filter", "0"},
			{"net.ipv4.conf.all.send_redirects", "0"}, {"net.ipv4.conf.default.send_redirects", "0"},
		} {
			if err := sysctl(kv[0], kv[1]); err != nil {
				return err
			}
		}
		var err error
		dev, err = openTUN("wantun")
		return err
	}); err != nil {
		return nil, err
	}
	for _, s := range [][]string{
		{"-n", l.R.Name, "link", "set", "wantun", "mtu", "1500", "txqueuelen", "10000", "up"},
		{"-n", l.R.Name, "route", "add", "default", "dev", "wantun", "table", "100"},
		{"-n", l.R.Name, "rule", "add", "iif", "wana", "lookup", "100", "pref", "100"},
		{"-n", l.R.Name, "rule", "add", "iif", "wanb", "lookup", "100", "pref", "101"},
	} {
		if err := ip(s...); err != nil {
			dev.Close()
			return nil, err
		}
	}
	l.stage = newStage(dev, prefixB, lines, cfg.Trace, cfg.Logf)
	return l, nil
}

func newLines(cfg Config) ([2]*Line, error) {
	ab, err := NewLine(cfg.AtoB, cfg.Seed, uint64(AtoB))
	if err != nil {
		return [2]*Line{}, fmt.Errorf("A→B: %w", err)
	}
	ba, err := NewLine(cfg.BtoA, cfg.Seed, uint64(BtoA))
	if err != nil {
		return [2]*Line{}, fmt.Errorf("B→A: %w", err)
	}
	return [2]*Line{ab, ba}, nil
}

// openTUN creates a TUN device with offloads in the calling thread's
// namespace, without the monitoring goroutines of tun.CreateTUN.
func openTUN(name string) (tun.Device, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("wanlab: open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("wanlab: create TUN device %s: %w", name, err)
	}
	dev, _, err := tun.CreateUnmonitoredTUNFromFD(fd)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("wanlab: TUN device %s: %w", name, err)
	}
	return dev, nil
}

func ip(args ...string) error {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("wanlab: ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Set changes both directions' impairments, with fresh lines (their
// random decisions start again from the seed, their stats from zero).
// Packets in flight on the old lines leave at once.
func (l *Lab) Set(aToB, bToA Impairment) error {
	lines, err := newLines(Config{AtoB: aToB, BtoA: bToA, Seed: l.cfg.Seed})
	if err != nil {
		return err
	}
	l.stage.set(lines)
	return nil
}

// Stats returns what each direction's line has done since the lab
// started or the last Set.
func (l *Lab) Stats() (aToB, bToA Stats) {
	s := l.stage.stats()
	return s[AtoB], s[BtoA]
}

// Errors counts the stage's failed reads from and writes to its TUN device.
func (l *Lab) Errors() (reads, writes uint64) {
	return l.stage.readErrs.Load(), l.stage.writeErrs.Load()
}

// Close stops the stage and deletes the namespaces (the kernel keeps one
// alive while a process still runs in it). A second Close returns
// net.ErrClosed.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return net.ErrClosed
	}
	l.closed = true
	l.mu.Unlock()
	l.stage.stop()
	var errs []error
	for _, ns := range []Namespace{l.A, l.B, l.R} {
		errs = append(errs, ip("netns", "del", ns.Name))
	}
	return errors.Join(errs...)
}
