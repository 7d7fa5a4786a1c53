package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	"github.com/gpumesh/gpumesh/gpusvc/worker"
	"github.com/gpumesh/gpumesh/node"
)

// The GPU backend of `gpumesh serve`: gpumesh-gpu worker processes, one per
// GPU and caller, supervised by gpusvc/worker; or the CPU backend.

type gpuFlags struct {
	backend    string   // auto, cpu, cuda
	worker     string   // the gpumesh-gpu binary; "" finds it
	workerArgs []string // extra worker arguments (hidden; tests use --stand-in)
}

var gpuOpts gpuFlags

// gpuStatusOut receives the one line that says which backend serves and why.
var gpuStatusOut io.Writer = os.Stderr

func init() {
	addServeHook(serveHook{
		flags: func(fs *pflag.FlagSet) {
			gpuOpts = gpuFlags{}
			fs.StringVar(&gpuOpts.backend, "backend", "auto", `compute backend: "cuda" (gpumesh-gpu workers; fail if they cannot start), "cpu", or "auto" (cuda when a worker starts, else cpu)`)
			fs.StringVar(&gpuOpts.worker, "gpu-worker", "", "the gpumesh-gpu worker binary (default: gpumesh-gpu next to this executable, then $PATH)")
			fs.StringArrayVar(&gpuOpts.workerArgs, "gpu-worker-arg", nil, "extra argument for every worker (repeatable)")
			fs.MarkHidden("gpu-worker-arg")
		},
		apply: func(ctx context.Context, cfg *node.HostConfig) (func(), error) {
			b, err := startGPUBackend(ctx, gpuOpts, cfg, gpuStatusOut)
			if err != nil || b == nil {
				return nil, err
			}
			return func() { b.Close() }, nil
		},
	})
}

// startGPUBackend sets cfg.Backend as the flags ask and writes one status
// line to out. It returns the backend to close after the host, or nil.
func startGPUBackend(ctx context.Context, f gpuFlags, cfg *node.HostConfig, out io.Writer) (gpusvc.Backend, error) {
	switch f.backend {
	case "cpu":
		fmt.Fprintln(out, "gpumesh: backend cpu (--backend cpu)")
		return nil, nil
	case "auto", "cuda":
	default:
		return nil, fmt.Errorf(`--backend %q: want "auto", "cpu" or "cuda"`, f.backend)
	}
	path, err := findGPUWorker(f.worker)
	if err == nil {
		var s *worker.Supervisor
		s, err = worker.Start(ctx, worker.Config{Path: path, Args: f.workerArgs, Logger: cfg.Logger})
		if err == nil {
			info := s.Info(ctx)
			fmt.Fprintf(out, "gpumesh: backend %s: %d device(s) through %s, one worker per GPU and caller; nvrtc: %s\n",
				info.Backend, len(info.Devices), path, orNone(info.NVRTC))
			cfg.Backend = s
			return s, nil
		}
	}
	if f.backend == "cuda" {
		return nil, fmt.Errorf("--backend cuda: %w", err)
	}
	reason := err.Error()
	var se *worker.StartError
	if errors.As(err, &se) {
		reason = "gpu worker could not start: " + se.Reason
	}
	fmt.Fprintf(out, "gpumesh: backend cpu: %s\n", reason)
	b := &cpuFallback{Backend: cpu.New(), why: reason}
	cfg.Backend = b
	return b, nil
}

func orNone(s string) string {
	if s == "" {
		return "none found"
	}
	return s
}

// findGPUWorker returns the worker binary: the flag's, else gpumesh-gpu
// beside this executable, else on $PATH.
func findGPUWorker(flag string) (string, error) {
	if flag != "" {
		p, err := exec.LookPath(flag)
		if err != nil {
			return "", fmt.Errorf("--gpu-worker: %w", err)
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

// workerCollector exports a supervisor's counters to Prometheus.
type workerCollector struct {
	stats func() worker.Stats
}

var (
	workerLiveDesc = prometheus.NewDesc("gpumesh_gpu_workers", "GPU worker processes running.", nil, nil)
	workerEvDesc   = prometheus.NewDesc("gpumesh_gpu_worker_events_total", "GPU worker starts, restarts, crashes, failed starts and idle stops.", []string{"event"}, nil)
)

// newWorkerCollector returns a collector for b's workers, or nil when b
// runs none.
func newWorkerCollector(b gpusvc.Backend) prometheus.Collector {
	s, ok := b.(interface{ Stats() worker.Stats })
	if !ok {
		return nil
	}
	return workerCollector{stats: s.Stats}
}

func (workerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- workerLiveDesc
	ch <- workerEvDesc
}

func (c workerCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.stats()
	ch <- prometheus.MustNewConstMetric(workerLiveDesc, prometheus.GaugeValue, float64(st.Live))
	for _, e := range []struct {
		name string
		n    uint64
	}{{"started", st.Started}, {"restart", st.Restarts}, {"crash", st.Crashes}, {"start_failure", st.StartFailures}, {"reaped", st.Reaped}} {
		ch <- prometheus.MustNewConstMetric(workerEvDesc, prometheus.CounterValue, float64(e.n), e.name)
	}
}
