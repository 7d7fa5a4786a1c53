package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/gpumesh/gpumesh/diag"
	"github.com/gpumesh/gpumesh/overlay/tsnet"
)

// tailnetFlags are the flags every command that joins a tailnet takes.
type tailnetFlags struct {
	controlURL  string
	authKey     string
	authKeyFile string
	hostname    string
	stateDir    string
	ephemeral   bool
	tags        []string
	port        uint16
	logUpload   bool
	portMapper  bool
	verbose     bool
}

// defaultControlURL is Tailscale's coordination server, used only when
// --control-url is not given.
const defaultControlURL = "https://controlplane.tailscale.com"

func (f *tailnetFlags) register(cmd *cobra.Command, host string) {
	fl := cmd.Flags()
	fl.StringVar(&f.controlURL, "control-url", envOr("TS_CONTROL_URL", defaultControlURL), "control server URL (Tailscale's, or your Headscale's); env TS_CONTROL_URL")
	fl.StringVar(&f.authKey, "authkey", "", "auth key for the first join; env TS_AUTHKEY")
	fl.StringVar(&f.authKeyFile, "authkey-file", "", "read the auth key from this file")
	fl.StringVar(&f.hostname, "hostname", host, "this node's name on the tailnet")
	fl.StringVar(&f.stateDir, "state-dir", "", "where the node keeps its identity (default: the user config dir, gpumesh/HOSTNAME)")
	fl.BoolVar(&f.ephemeral, "ephemeral", false, "remove the node from the tailnet when it goes offline")
	fl.StringSliceVar(&f.tags, "advertise-tags", nil, "ACL tags to ask for (tag:gpu,...)")
	fl.Uint16Var(&f.port, "wg-port", 0, "UDP port for WireGuard traffic (0: pick one)")
	fl.BoolVar(&f.logUpload, "log-upload", false, "opt in to Tailscale's log upload (off by default)")
	fl.BoolVar(&f.portMapper, "port-mapper", false, "opt in to UPnP/NAT-PMP/PCP port mapping (off by default)")
	fl.BoolVarP(&f.verbose, "verbose", "v", false, "print debug logs (Tailscale's too) to stderr")
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// config turns the flags into a node configuration.
func (f *tailnetFlags) config() (tsnet.Config, error) {
	key := f.authKey
	if key == "" && f.authKeyFile != "" {
		b, err := os.ReadFile(f.authKeyFile)
		if err != nil {
			return tsnet.Config{}, fmt.Errorf("auth key file: %w", err)
		}
		key = strings.TrimSpace(string(b))
	}
	if key == "" {
		key = os.Getenv("TS_AUTHKEY")
	}
	dir := f.stateDir
	if dir == "" {
		var err error
		if dir, err = diag.DefaultStateDir(f.hostname); err != nil {
			return tsnet.Config{}, fmt.Errorf("no --state-dir: %w", err)
		}
	}
	cfg := tsnet.Config{
		Hostname:   f.hostname,
		ControlURL: f.controlURL,
		AuthKey:    key,
		Dir:        dir,
		Ephemeral:  f.ephemeral,
		Tags:       f.tags,
		Port:       f.port,
		LogUpload:  f.logUpload,
		PortMapper: f.portMapper,
	}
	if f.verbose {
		// Tailscale's own debug logs, in gpumesh's one style, on stderr.
		debug := logger(true)
		cfg.Logf = func(format string, args ...any) { debug.Debug(fmt.Sprintf(format, args...)) }
	}
	return cfg, nil
}

// logger returns the debug logger: gpumesh's one log style (lineHandler)
// on stderr, everything with -v, otherwise warnings only.
func logger(verbose bool) *slog.Logger {
	level := slog.LevelWarn
	if verbose {
		level = slog.LevelDebug
	}
	return slog.New(newLineHandler(os.Stderr, level))
}

// commandLogger is a long-running command's logger (serve, up): its
// progress, its parts' logs and their warnings, in gpumesh's one style on
// w, which is stdout; debug logs too with -v.
func commandLogger(w io.Writer, verbose bool) *slog.Logger {
	level := slog.LevelInfo
	if verbose {
		level = slog.LevelDebug
	}
	return slog.New(newLineHandler(w, level))
}

// logfTo adapts log for packages that take a printf-style logger: each
// line is an Info record.
func logfTo(log *slog.Logger) func(format string, args ...any) {
	return func(format string, args ...any) { log.Info(fmt.Sprintf(format, args...)) }
}
