package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/gpumesh/gpumesh/overlay/tsnet"
)

// stateFile is where a tsnet node keeps its identity inside its state dir.
const stateFile = "tailscaled.state"

func newLogoutCmd() *cobra.Command {
	var (
		tf        tailnetFlags
		keepState bool
		timeout   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "logout --state-dir DIR",
		Short: "Log a node out of the tailnet and forget its identity",
		Long: `logout brings up the node kept in --state-dir (a GPU host's or a client's),
tells the control server to expire its key, and removes the node's state, so
that the next start needs a new auth key. The control server must be
reachable; no auth key is used.

Run it while the node's own process is stopped: two processes must not share
a state dir. --hostname should be the node's name on the tailnet.`,
		Example: "  gpumesh logout --state-dir /var/lib/gpumesh/gpu-host --hostname gpu-host --control-url https://hs.example.com",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := tf.config()
			if err != nil {
				return err
			}
			path := filepath.Join(cfg.Dir, stateFile)
			if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("logout: no node state in %s: nothing to log out", cfg.Dir)
			} else if err != nil {
				return fmt.Errorf("logout: %w", err)
			}
			// Never log in again on the way out.
			cfg.AuthKey = ""
			ov, err := tsnet.New(cfg)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			what := "logged out"
			if _, err := ov.Up(ctx); errors.Is(err, tsnet.ErrNeedsLogin) {
				// Logged out already (or its key expired): only the state is left.
				ov.Close()
				what = "already logged out"
			} else if err != nil {
				ov.Close()
				return fmt.Errorf("logout: reach the control server %s: %w", cfg.ControlURL, err)
			} else if err := ov.Logout(ctx); err != nil {
				return fmt.Errorf("logout: %w", err)
			}
			log := commandLogger(cmd.OutOrStdout(), tf.verbose)
			if keepState {
				log.Info(fmt.Sprintf("%s %s; state kept in %s", cfg.Hostname, what, cfg.Dir))
				return nil
			}
			if err := removeState(cfg.Dir); err != nil {
				return fmt.Errorf("logout: %s, but %w", what, err)
			}
			log.Info(fmt.Sprintf("%s %s; removed its state from %s", cfg.Hostname, what, cfg.Dir))
			return nil
		},
	}
	tf.register(cmd, "gpu-host")
	cmd.Flags().BoolVar(&keepState, "keep-state", false, "keep the (logged-out) state files")
	cmd.Flags().DurationVar(&timeout, "timeout", time.Minute, "give up after this long")
	return cmd
}

// removeState removes the node's identity and Tailscale's other files from
// dir, and dir itself when nothing else is left in it.
func removeState(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("remove state: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if name == stateFile || isTailscaleFile(name) {
			if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
				return fmt.Errorf("remove state: %w", err)
			}
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, syscall.ENOTEMPTY) && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("remove state: %w", err)
	}
	return nil
}

// isTailscaleFile says whether name is one of the files tsnet keeps beside
// its state: logs and the derp/control key caches.
func isTailscaleFile(name string) bool {
	for _, pat := range []string{"tailscaled.log*.txt", "tailscaled.log.conf", "*.state.tmp*", "certs"} {
		if ok, _ := filepath.Match(pat, name); ok {
			return true
		}
	}
	return false
}
