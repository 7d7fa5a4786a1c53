package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	"github.com/gpumesh/gpumesh/gpusvc/worker"
)

// BackendKind names what runs a host's kernels.
type BackendKind string

const (
	// BackendCPU runs the built-in kernels on the host's cores. The zero
	// value of BackendKind means it too.
	BackendCPU BackendKind = "cpu"
	// BackendCUDA runs gpumesh-gpu workers, one per GPU and caller; the
	// host does not start without them.
	BackendCUDA BackendKind = "cuda"
	// BackendAuto runs the workers when one starts, else the CPU backend,
	// saying why.
	BackendAuto BackendKind = "auto"
)

// BackendConfig chooses a host's backend. The zero value is the CPU
// backend.
type BackendConfig struct {
	Kind BackendKind
	// Ready, instead of Kind, is a backend already made (a test's
	// simulated GPU): the host serves it and leaves closing it to its
	// maker.
	Ready gpusvc.Backend
	// Worker is the gpumesh-gpu binary; "" means gpumesh-gpu next to this
	// executable, then on $PATH.
	Worker string
	// WorkerArgs are passed to every worker (tests: --stand-in).
	WorkerArgs []string
}

func (c BackendConfig) validate() error {
	if c.Ready != nil && (c.Kind != "" || c.Worker != "" || c.WorkerArgs != nil) {
		return errors.New("node: a ready backend takes no kind or worker")
	}
	switch c.Kind {
	case "", BackendCPU, BackendCUDA, BackendAuto:
		return nil
	}
	return fmt.Errorf(`node: backend %q: want "auto", "cpu" or "cuda"`, c.Kind)
}

// startBackend starts the backend cfg asks for. With BackendAuto, a worker
// that cannot start leaves the host on the CPU backend: the one place that
// decides so, logged once with the reason, and reported in the backend's
// Info status.
func startBackend(ctx context.Context, cfg BackendConfig, log *slog.Logger) (gpusvc.Backend, error) {
	if cfg.Kind == "" || cfg.Kind == BackendCPU {
		log.Info("backend cpu")
		return cpu.New(), nil
	}
	path, err := findWorker(cfg.Worker)
	if err == nil {
		var s *worker.Supervisor
		if s, err = worker.Start(ctx, worker.Config{Path: path, Args: cfg.WorkerArgs, Logger: log}); err == nil {
			info := s.Info(ctx)
			nvrtc := info.NVRTC
			if nvrtc == "" {
				nvrtc = "none found"
			}
			log.Info(fmt.Sprintf("backend %s: %d device(s) through %s, one worker per GPU and caller; nvrtc: %s",
				info.Backend, len(info.Devices), path, nvrtc))
			return s, nil
		}
	}
	if cfg.Kind == BackendCUDA {
		return nil, fmt.Errorf("node: backend cuda: %w", err)
	}
	reason := err.Error()
	if se, ok := errors.AsType[*worker.StartError](err); ok {
		reason = "gpu worker could not start: " + se.Reason
	}
	log.Info("backend cpu: " + reason)
	return &cpuFallback{Backend: cpu.New(), why: reason}, nil
}

// findWorker returns the worker binary: path, else gpumesh-gpu beside this
// executable, else on $PATH.
func findWorker(path string) (string, error) {
	if path != "" {
		p, err := exec.LookPath(path)
		if err != nil {
			return "", fmt.Errorf("gpu worker: %w", err)
		}
		return filepath.Abs(p)
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "gpumesh-gpu")
		if _, err := exec.LookPath(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath("gpumesh-gpu")
	if err != nil {
		return "", errors.New("no gpumesh-gpu worker next to gpumesh or on $PATH (build it with `make build-cuda`)")
	}
	return filepath.Abs(p)
}

// cpuFallback is the CPU backend, saying in its status why it serves.
type cpuFallback struct {
	*cpu.Backend
	why string
}

func (b *cpuFallback) Info(ctx context.Context) gpusvc.Info {
	info := b.Backend.Info(ctx)
	info.Status += "; no GPU: " + b.why
	return info
}
