package testtools

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/ipn"
	"tailscale.com/types/preftype"
)

// TailscaledOptions say how StartTailscaled runs a tailscaled.
type TailscaledOptions struct {
	// Bin is the tailscaled binary (Tailscaled).
	Bin string
	// Wrap, if set, makes the command (e.g. to run it in a network
	// namespace: wanlab.Namespace.Command); nil is exec.Command.
	Wrap func(name string, args ...string) *exec.Cmd
	// Name is the node's hostname on the tailnet.
	Name string
	// Port is its WireGuard UDP port; 0 picks one.
	Port int
	// TUN is the --tun argument: an interface name, or
	// "userspace-networking".
	TUN string
	// ControlURL, if set, is the tailnet to join; empty leaves the daemon
	// logged out.
	ControlURL string
	// Log receives the daemon's output; nil discards it.
	Log io.Writer
}

// TailscaledProc is a running tailscaled.
type TailscaledProc struct {
	// Socket is its LocalAPI socket.
	Socket string
	// Local is a client of its LocalAPI.
	Local *local.Client
}

// StartTailscaled runs a tailscaled, kept off every public host (no log
// upload, no port mapper, DERP over plain HTTP as the embedded tailnet's
// relay speaks it, and a panic should anything reach for Tailscale's own
// control server), waits until its LocalAPI answers and, with a control
// URL, until it runs on that tailnet. The test's cleanup stops it.
func StartTailscaled(tb testing.TB, o TailscaledOptions) (*TailscaledProc, error) {
	tb.Helper()
	dir, err := os.MkdirTemp("", "tsd-") // short: a socket's path has a limit
	if err != nil {
		return nil, err
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "sock")
	wrap := o.Wrap
	if wrap == nil {
		wrap = exec.Command
	}
	cmd := wrap(o.Bin, "--tun="+o.TUN, "--statedir="+dir, "--socket="+sock,
		fmt.Sprintf("--port=%d", o.Port), "--no-logs-no-support")
	// A namespace with only loopback (CI) still counts as a network that is up.
	cmd.Env = append(os.Environ(), "TS_DISABLE_PORTMAPPER=1", "TS_DEBUG_USE_DERP_HTTP=true", "TS_PANIC_IF_HIT_MAIN_CONTROL=1",
		"TS_ASSUME_NETWORK_UP_FOR_TEST=1")
	cmd.Stdout, cmd.Stderr = o.Log, o.Log
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	tb.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second): // it ignored the interrupt
			cmd.Process.Kill()
			<-exited
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	lc := &local.Client{Socket: sock, UseSocketOnly: true}
	if err := waitSocket(ctx, lc, exited); err != nil {
		return nil, err
	}
	d := &TailscaledProc{Socket: sock, Local: lc}
	if o.ControlURL == "" {
		return d, nil
	}
	prefs := ipn.NewPrefs()
	prefs.ControlURL = o.ControlURL
	prefs.Hostname = o.Name
	prefs.WantRunning = true
	prefs.CorpDNS = false
	prefs.NetfilterMode = preftype.NetfilterOff
	if err := lc.Start(ctx, ipn.Options{UpdatePrefs: prefs}); err != nil {
		return nil, fmt.Errorf("tailscaled start: %w", err)
	}
	w, err := lc.WatchIPNBus(ctx, ipn.NotifyInitialState)
	if err != nil {
		return nil, err
	}
	defer w.Close()
	if err := lc.StartLoginInteractive(ctx); err != nil {
		return nil, fmt.Errorf("tailscaled login: %w", err)
	}
	for {
		nt, err := w.Next()
		if err != nil {
			return nil, fmt.Errorf("waiting for tailscaled to run: %w", err)
		}
		if nt.State != nil && *nt.State == ipn.Running {
			return d, nil
		}
	}
}

// waitSocket waits until tailscaled answers on its LocalAPI socket, or
// exits.
func waitSocket(ctx context.Context, lc *local.Client, exited <-chan error) error {
	for {
		if _, err := lc.Status(ctx); err == nil {
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("tailscaled exited: %v", err)
		case <-ctx.Done():
			return errors.New("tailscaled never answered on its socket")
		case <-time.After(20 * time.Millisecond): // polling the socket
		}
	}
}
