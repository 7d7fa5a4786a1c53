package main

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/worker"
	"github.com/gpumesh/gpumesh/node"
)

func TestServeGPUBackend(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "gpumesh-gpu")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/gpumesh/gpumesh/cmd/gpumesh-gpu").CombinedOutput(); err != nil {
		t.Fatalf("build gpumesh-gpu: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		name    string
		flags   gpuFlags
		backend string // Info().Backend; "" when none is set
		line    string // in the one status line
		status  string // in Info().Status
		err     string
	}{
		{name: "cpu", flags: gpuFlags{backend: "cpu"}, line: "backend cpu (--backend cpu)"},
		{name: "auto, worker exits at start", flags: gpuFlags{backend: "auto", worker: bin},
			backend: "cpu", line: "backend cpu: gpu worker could not start: gpumesh-gpu: built without CUDA support", status: "built without CUDA support"},
		{name: "auto, no worker binary", flags: gpuFlags{backend: "auto", worker: filepath.Join(t.TempDir(), "nothing")},
			backend: "cpu", line: "backend cpu: --gpu-worker:", status: "no GPU"},
		{name: "auto, stand-in worker", flags: gpuFlags{backend: "auto", worker: bin, workerArgs: []string{"--stand-in"}},
			backend: "stand-in", line: "backend stand-in: 1 device(s) through " + bin, status: "one process per GPU and caller"},
		{name: "cuda, worker exits at start", flags: gpuFlags{backend: "cuda", worker: bin}, err: "built without CUDA support"},
		{name: "bad flag", flags: gpuFlags{backend: "rocm"}, err: `--backend "rocm"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			var cfg node.HostConfig
			b, err := startGPUBackend(context.Background(), tc.flags, &cfg, &out)
			if b != nil {
				defer b.Close()
			}
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if n := strings.Count(out.String(), "\n"); n != 1 || !strings.Contains(out.String(), tc.line) {
				t.Errorf("status output %q, want one line with %q", out.String(), tc.line)
			}
			if tc.backend == "" {
				if cfg.Backend != nil {
					t.Errorf("backend set: %T", cfg.Backend)
				}
				return
			}
			info := cfg.Backend.Info(context.Background())
			if info.Backend != tc.backend || !strings.Contains(info.Status, tc.status) {
				t.Errorf("backend %q status %q, want %q with %q", info.Backend, info.Status, tc.backend, tc.status)
			}
			_, custom := cfg.Backend.(gpusvc.Modules)
			if _, sup := cfg.Backend.(*worker.Supervisor); custom != sup {
				t.Errorf("%T: custom kernels %v", cfg.Backend, custom)
			}
			c := newWorkerCollector(cfg.Backend)
			if (c != nil) != (tc.backend == "stand-in") {
				t.Fatalf("collector %v for %T", c, cfg.Backend)
			}
			if c != nil {
				reg := prometheus.NewPedanticRegistry()
				reg.MustRegister(c)
				mfs, err := reg.Gather()
				if err != nil || len(mfs) != 2 || mfs[0].GetName() != "gpumesh_gpu_worker_events_total" || mfs[1].GetMetric()[0].GetGauge().GetValue() < 1 {
					t.Errorf("worker metrics: %v, %v", mfs, err)
				}
			}
		})
	}
}
