package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	"github.com/gpumesh/gpumesh/gpusvc/nvml"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/policy"
)

// TestGPUsLocal: without a driver, `gpumesh gpus` says so and succeeds;
// with one it prints a row per GPU.
func TestGPUsLocal(t *testing.T) {
	_, probeErr := nvml.Probe()
	out, err := runKeysCmd(t, "", "gpus")
	if err != nil {
		t.Fatalf("gpumesh gpus: %v (output %q)", err, out)
	}
	jsonOut, err := runKeysCmd(t, "", "gpus", "--json")
	if err != nil {
		t.Fatalf("gpumesh gpus --json: %v", err)
	}
	var r gpusReport
	if err := json.Unmarshal([]byte(jsonOut), &r); err != nil {
		t.Fatalf("--json output %q: %v", jsonOut, err)
	}
	if errors.Is(probeErr, nvml.ErrNoDriver) {
		if !strings.HasPrefix(out, "no NVIDIA GPU (NVML: no NVIDIA driver: ") || !strings.HasSuffix(out, "); backend cpu\n") {
			t.Errorf("output %q; want the no-GPU line", out)
		}
		if r.Backend != "cpu" || !strings.HasPrefix(r.Status, "no NVIDIA GPU") || len(r.GPUs) != 0 {
			t.Errorf("--json = %+v; want backend cpu and the no-GPU status", r)
		}
		return
	}
	t.Logf("%s", out)
	if !strings.Contains(out, "GPU  NAME") || len(r.GPUs) == 0 {
		t.Errorf("output %q, json %+v: want a table of GPUs", out, r)
	}
}

// TestGPUsHost asks a GPU host on an embedded tailnet.
func TestGPUsHost(t *testing.T) {
	if testing.Short() {
		t.Skip("joins an embedded tailnet")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tn, err := overlaytest.Start(overlaytest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tn.Close()
	host, err := tn.Join(ctx, "gpu-host")
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	srv, err := gpusvc.NewServer(gpusvc.Config{Backend: cpu.New(), WhoIs: host.WhoIs, Policy: policy.AllowAllForTest, Host: "gpu-host"})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := host.Listen("tcp", ":"+strconv.Itoa(gpusvc.DefaultPort))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln)
	}()
	defer func() { srv.Stop(); <-served }()

	args := []string{"gpus", "--host", "gpu-host", "--control-url", tn.ControlURL, "--state-dir", t.TempDir(), "--hostname", "laptop", "--ephemeral"}
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append(args, "--json"))
	if err := root.ExecuteContext(ctx); err != nil {
		t.Fatalf("gpumesh %v: %v\n%s", args, err, out.String())
	}
	var r gpusReport
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("output %q: %v", out.String(), err)
	}
	if r.Host != "gpu-host" || r.Caller != "laptop" || r.Backend != "cpu" || len(r.GPUs) != 1 || !strings.HasPrefix(r.GPUs[0].Name, "CPU") {
		t.Errorf("gpus --host = %+v; want gpu-host's CPU backend, seen by laptop", r)
	}
	var table bytes.Buffer
	printGPUs(&table, r)
	for _, want := range []string{"host gpu-host (you are laptop): backend cpu", "status: cpu backend", "GPU  NAME", "0    CPU ("} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table %q lacks %q", table.String(), want)
		}
	}
}

func TestPrintGPUs(t *testing.T) {
	var b bytes.Buffer
	printGPUs(&b, gpusReport{Driver: "550.54.15", CUDA: "12.4", NVML: "12.550.54.15", NVRTC: "libnvrtc.so.12", GPUs: []gpuRow{{
		Index: 0, UUID: "GPU-0123", Name: "NVIDIA H200", MemoryTotal: 141 << 30, MemoryUsed: 600 << 20,
		UtilizationPercent: 7, TemperatureC: 31, PowerMW: 75500, Unsupported: []string{"power (Not Supported)"},
	}}})
	want := `driver 550.54.15   CUDA 12.4   NVML 12.550.54.15   NVRTC libnvrtc.so.12
GPU  NAME         UUID      MEMORY USED / TOTAL  UTIL  TEMP  POWER
0    NVIDIA H200  GPU-0123  600MiB / 144384MiB   7%    31C   76W
gpu 0: not reported: power (Not Supported)
`
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}
