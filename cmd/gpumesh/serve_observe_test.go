package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/gpumesh/gpumesh/gpusvc/audit"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
)

func scrape(t *testing.T, c *http.Client, url string) map[string]*dto.MetricFamily {
	t.Helper()
	res, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// counter sums a family's samples whose labels include all of want.
func counter(fams map[string]*dto.MetricFamily, name string, want ...string) float64 {
	var sum float64
	for _, m := range fams[name].GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		ok := true
		for _, kv := range want {
			k, v, _ := strings.Cut(kv, "=")
			ok = ok && labels[k] == v
		}
		if !ok {
			continue
		}
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		}
	}
	return sum
}

// TestObserveOnTailnet: `gpumesh serve --audit-log --metrics-listen
// tailnet:PORT` on an embedded tailnet. The laptop makes calls, then
// scrapes the metrics through the tailnet; the counters match the calls,
// the audit log holds each, and `gpumesh audit tail` prints them.
func TestObserveOnTailnet(t *testing.T) {
	if testing.Short() {
		t.Skip("joins an embedded tailnet")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tn, nodes := overlaytest.StartNodes(t, "laptop")
	laptop := nodes[0]

	dir := t.TempDir()
	polPath := filepath.Join(dir, "policy.hcl")
	os.WriteFile(polPath, []byte(`
version = 1
class "interactive" {
  dscp     = "AF41"
  priority = 1
}
rule "laptop" {
  subjects = ["laptop"]
  kernels  = ["matrix_mul", "relu"]
  gpus     = ["*"]
  class    = "interactive"
}
rule "scrape" {
  subjects = ["laptop"]
  kernels  = ["observe:metrics"]
  gpus     = ["*"]
}
`), 0o600)
	logPath := filepath.Join(dir, "audit.log")
	state := filepath.Join(dir, "gpu-host")
	startServe(t, ctx, state, "--policy", polPath, "--hostname", "gpu-host", "--state-dir", state,
		"--control-url", tn.ControlURL, "--ephemeral", "--dscp", "off", "--backend", "cpu",
		"--audit-log", logPath, "--audit-max-size", "1MiB", "--audit-keep", "2", "--metrics-listen", "tailnet:9090")

	c, err := node.Dial(laptop, "gpu-host")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	v := kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32([]int64{4}, []float32{-1, 2, -3, 4})}
	m := kernel.Arg{Kind: kernel.ArgTensor, Tensor: kernel.NewFloat32([]int64{2, 2}, []float32{1, 2, 3, 4})}
	// The client asks Devices once, for its limits, before its first call.
	const relus, matmuls, denied, devices = 7, 3, 2, 1
	for range relus {
		if _, err := c.Compute(ctx, "relu", v); err != nil {
			t.Fatal(err)
		}
	}
	for range matmuls {
		if _, err := c.Compute(ctx, "matrix_mul", m, m); err != nil {
			t.Fatal(err)
		}
	}
	for range denied {
		if _, err := c.Compute(ctx, "saxpy", kernel.Arg{Kind: kernel.ArgScalar, Scalar: 1}, v, v); err == nil {
			t.Fatal("saxpy allowed")
		}
	}

	httpc := &http.Client{Transport: &http.Transport{DialContext: laptop.Dial}}
	defer httpc.CloseIdleConnections()
	fams := scrape(t, httpc, "http://gpu-host:9090/metrics")
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"gpumesh_calls_total", []string{"caller=laptop", "kernel=relu", "code=OK", "class=interactive"}, relus},
		{"gpumesh_calls_total", []string{"caller=laptop", "kernel=matrix_mul", "code=OK", "class=interactive"}, matmuls},
		{"gpumesh_calls_total", []string{"caller=laptop", "kernel=saxpy", "code=PermissionDenied"}, denied},
		{"gpumesh_calls_total", nil, relus + matmuls + denied + devices},
		{"gpumesh_call_errors_total", nil, denied},
		{"gpumesh_call_duration_seconds", []string{"kernel=relu"}, relus},
		{"gpumesh_call_duration_seconds", nil, relus + matmuls + denied + devices},
		{"gpumesh_sent_bytes_total", []string{"caller=laptop"}, relus*16 + matmuls*16},
		{"gpumesh_gpu_info", []string{"backend=cpu"}, 1},
	} {
		if got := counter(fams, tc.name, tc.labels...); got != tc.want {
			t.Errorf("%s%v = %g; want %g", tc.name, tc.labels, got, tc.want)
		}
	}

	// The metrics are on the tailnet only: not on the host's loopback.
	if conn, err := net.DialTimeout("tcp", "127.0.0.1:9090", time.Second); err == nil {
		conn.Close()
		t.Log("something else listens on 127.0.0.1:9090; not checking")
	}

	// Every call once in the audit log, and `audit tail` shows them.
	lines, err := audit.Tail(logPath, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != relus+matmuls+denied+devices {
		t.Fatalf("audit log has %d lines; want %d", len(lines), relus+matmuls+denied+devices)
	}
	out, err := runKeysCmd(t, "", "audit", "tail", "-n", "3", logPath)
	if err != nil {
		t.Fatal(err)
	}
	tail := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(tail) != 3 || !strings.Contains(tail[0], "matrix_mul") || !strings.Contains(tail[2], "saxpy") ||
		!strings.Contains(tail[2], "PermissionDenied") {
		t.Fatalf("audit tail -n 3 printed:\n%s", out)
	}
	for _, l := range tail {
		if f := strings.Fields(l); len(f) < 4 || f[2] != "laptop" {
			t.Fatalf("audit tail line without its caller: %q", l)
		}
	}
	out, err = runKeysCmd(t, "", "audit", "tail", "--json", "-n", "0", logPath)
	if err != nil || strings.Count(out, "\n") != relus+matmuls+denied+devices || !strings.Contains(out, `"rule":"laptop"`) {
		t.Fatalf("audit tail --json: %v\n%s", err, out)
	}

	// Resident buffers show per identity, read from the running server.
	sess, err := c.OpenSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Alloc(ctx, sess.ID, "", 1024); err != nil {
		t.Fatal(err)
	}
	fams = scrape(t, httpc, "http://gpu-host:9090/metrics")
	for name, want := range map[string]float64{"gpumesh_sessions": 1, "gpumesh_buffers": 1, "gpumesh_buffer_bytes": 1024} {
		if got := counter(fams, name, "caller=laptop"); got != want {
			t.Errorf("%s{caller=laptop} = %g; want %g", name, got, want)
		}
	}
}
