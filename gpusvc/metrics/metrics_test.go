package metrics_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc/codes"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/metrics"
	"github.com/gpumesh/gpumesh/overlay"
)

// Scrape fetches url and parses it with the Prometheus text parser.
func Scrape(t testing.TB, url string) map[string]*dto.MetricFamily {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(res.Body)
		t.Fatalf("scrape %s: %s: %s", url, res.Status, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(res.Body)
	if err != nil {
		t.Fatalf("parse scrape: %v", err)
	}
	return fams
}

// Values returns a family's samples as "label=value,... value" lines,
// sorted; histograms give their sample count.
func Values(fams map[string]*dto.MetricFamily, name string) []string {
	f := fams[name]
	if f == nil {
		return nil
	}
	var out []string
	for _, m := range f.GetMetric() {
		var labels []string
		for _, l := range m.GetLabel() {
			labels = append(labels, l.GetName()+"="+l.GetValue())
		}
		var v float64
		switch {
		case m.Counter != nil:
			v = m.GetCounter().GetValue()
		case m.Gauge != nil:
			v = m.GetGauge().GetValue()
		case m.Histogram != nil:
			v = float64(m.GetHistogram().GetSampleCount())
		}
		out = append(out, fmt.Sprintf("%s %g", strings.Join(labels, ","), v))
	}
	sort.Strings(out)
	return out
}

func rec(caller, method, kernel string, code codes.Code, in, out int64, d time.Duration) gpusvc.CallRecord {
	return gpusvc.CallRecord{Time: time.Now(), Caller: overlay.Identity{Node: caller}, Method: method, Kernel: kernel,
		GPU: "0", BytesIn: in, BytesOut: out, Duration: d, Allow: code == codes.OK, Code: code}
}

func TestCountersAndGauges(t *testing.T) {
	m, err := metrics.New(metrics.Config{
		Info: func(context.Context) gpusvc.Info {
			return gpusvc.Info{Backend: "cuda", Devices: []gpusvc.Device{{
				Index: 0, UUID: "GPU-1234", Name: "NVIDIA H200", MemoryTotal: 141 << 30, MemoryUsed: 3 << 30,
				UtilizationPercent: 42, TemperatureC: 55, PowerMW: 123500, DriverVersion: "570.1", CUDAVersion: "12.8",
			}}}
		},
		Class: func(r gpusvc.CallRecord) string {
			if r.Caller.Node == "ci" {
				return "bulk"
			}
			return ""
		},
		NoRuntime: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	m.SetUsage(func() []metrics.Usage {
		return []metrics.Usage{{Identity: "laptop", Sessions: 1, Buffers: 2, Bytes: 4096}}
	})
	for _, r := range []gpusvc.CallRecord{
		rec("laptop", "Compute", "matrix_mul", codes.OK, 100, 16, time.Millisecond),
		rec("laptop", "Compute", "matrix_mul", codes.OK, 100, 16, 2*time.Millisecond),
		rec("laptop", "Write", "", codes.OK, 1<<20, 0, 5*time.Millisecond),
		rec("ci", "Compute", "relu", codes.OK, 50, 50, time.Millisecond),
		rec("ci", "Compute", "relu", codes.ResourceExhausted, 50, 0, time.Microsecond),
		rec("stranger", "Compute", "rm -rf /", codes.InvalidArgument, 10, 0, time.Microsecond),
	} {
		m.Record(r)
	}
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	fams := Scrape(t, srv.URL)

	for _, tc := range []struct {
		name string
		want []string
	}{
		{"gpumesh_calls_total", []string{
			"caller=ci,class=bulk,code=OK,kernel=relu,method=Compute 1",
			"caller=ci,class=bulk,code=ResourceExhausted,kernel=relu,method=Compute 1",
			"caller=laptop,class=default,code=OK,kernel=,method=Write 1",
			"caller=laptop,class=default,code=OK,kernel=matrix_mul,method=Compute 2",
			// An unknown kernel name does not become a series of its own.
			"caller=stranger,class=default,code=InvalidArgument,kernel=other,method=Compute 1",
		}},
		{"gpumesh_call_errors_total", []string{
			"caller=ci,class=bulk,code=ResourceExhausted,kernel=relu,method=Compute 1",
			"caller=stranger,class=default,code=InvalidArgument,kernel=other,method=Compute 1",
		}},
		{"gpumesh_call_duration_seconds", []string{
			"class=bulk,kernel=relu,method=Compute 2",
			"class=default,kernel=,method=Write 1",
			"class=default,kernel=matrix_mul,method=Compute 2",
			"class=default,kernel=other,method=Compute 1",
		}},
		{"gpumesh_received_bytes_total", []string{
			"caller=ci,method=Compute 100",
			"caller=laptop,method=Compute 200",
			"caller=laptop,method=Write 1.048576e+06",
			"caller=stranger,method=Compute 10",
		}},
		{"gpumesh_sent_bytes_total", []string{
			"caller=ci,method=Compute 50",
			"caller=laptop,method=Compute 32",
		}},
		{"gpumesh_buffers", []string{"caller=laptop 2"}},
		{"gpumesh_buffer_bytes", []string{"caller=laptop 4096"}},
		{"gpumesh_sessions", []string{"caller=laptop 1"}},
		{"gpumesh_gpu_info", []string{"backend=cuda,cuda=12.8,driver=570.1,gpu=0,name=NVIDIA H200,uuid=GPU-1234 1"}},
		{"gpumesh_gpu_memory_total_bytes", []string{"gpu=0,uuid=GPU-1234 1.51397597184e+11"}},
		{"gpumesh_gpu_utilization_ratio", []string{"gpu=0,uuid=GPU-1234 0.42"}},
		{"gpumesh_gpu_power_watts", []string{"gpu=0,uuid=GPU-1234 123.5"}},
		{"gpumesh_gpu_temperature_celsius", []string{"gpu=0,uuid=GPU-1234 55"}},
	} {
		if got := Values(fams, tc.name); fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("%s =\n  %s\nwant\n  %s", tc.name, strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
		}
	}
	// The latency histogram's sum is the durations recorded.
	for _, mm := range fams["gpumesh_call_duration_seconds"].GetMetric() {
		if labels := fmt.Sprint(mm.GetLabel()); strings.Contains(labels, "matrix_mul") {
			if s := mm.GetHistogram().GetSampleSum(); s < 0.0029 || s > 0.0031 {
				t.Errorf("matrix_mul latency sum = %g; want 0.003", s)
			}
		}
	}
}

func TestRuntimeCollectors(t *testing.T) {
	m, err := metrics.New(metrics.Config{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	fams := Scrape(t, srv.URL)
	if fams["go_goroutines"] == nil {
		t.Fatal("no Go runtime metrics")
	}
	if fams["gpumesh_gpu_info"] != nil || fams["gpumesh_buffers"] != nil {
		t.Fatal("GPU or usage metrics without their sources")
	}
}
