package node

import (
	"bytes"
	"context"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/worker"
)

// TestBackendChoice: the one place that picks a host's backend. The CPU
// backend when asked; with auto, a worker that cannot start leaves the
// host on the CPU backend, saying why in one log line and in its status;
// cuda without a worker does not start.
func TestBackendChoice(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "gpumesh-gpu")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/gpumesh/gpumesh/cmd/gpumesh-gpu").CombinedOutput(); err != nil {
		t.Fatalf("build gpumesh-gpu: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		name    string
		cfg     BackendConfig
		backend string // Info().Backend
		line    string // in the one log line
		status  string // in Info().Status
		err     string
	}{
		{name: "zero value", backend: "cpu", line: "backend cpu\n"},
		{name: "cpu", cfg: BackendConfig{Kind: BackendCPU}, backend: "cpu", line: "backend cpu\n"},
		{name: "auto, worker exits at start", cfg: BackendConfig{Kind: BackendAuto, Worker: bin},
			backend: "cpu", line: "backend cpu: gpu worker could not start: gpumesh-gpu: built without CUDA support", status: "built without CUDA support"},
		{name: "auto, no worker binary", cfg: BackendConfig{Kind: BackendAuto, Worker: filepath.Join(t.TempDir(), "nothing")},
			backend: "cpu", line: "backend cpu: gpu worker:", status: "no GPU"},
		{name: "auto, stand-in worker", cfg: BackendConfig{Kind: BackendAuto, Worker: bin, WorkerArgs: []string{"--stand-in"}},
			backend: "stand-in", line: "backend stand-in: 1 device(s) through " + bin, status: "one process per GPU and caller"},
		{name: "cuda, worker exits at start", cfg: BackendConfig{Kind: BackendCUDA, Worker: bin}, err: "built without CUDA support"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			log := slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
				if a.Key == slog.TimeKey || a.Key == slog.LevelKey {
					return slog.Attr{}
				}
				return a
			}}))
			b, err := startBackend(context.Background(), tc.cfg, log)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			// The supervisor logs its workers' starts too; the host says
			// once which backend serves.
			logged := strings.ReplaceAll(out.String(), `"`, "")
			if n := strings.Count(logged, "msg=backend "); n != 1 || !strings.Contains(logged, tc.line) {
				t.Errorf("log %q, want one backend line with %q", logged, tc.line)
			}
			info := b.Info(context.Background())
			if info.Backend != tc.backend || !strings.Contains(info.Status, tc.status) {
				t.Errorf("backend %q status %q, want %q with %q", info.Backend, info.Status, tc.backend, tc.status)
			}
			_, custom := b.(gpusvc.Modules)
			if _, sup := b.(*worker.Supervisor); custom != sup {
				t.Errorf("%T: custom kernels %v", b, custom)
			}
		})
	}
}
