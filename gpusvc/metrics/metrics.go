// Package metrics exposes a GPU host's Prometheus metrics: calls, errors
// and latency per kernel and QoS class, bytes in and out, live buffers and
// memory per identity, and GPU telemetry.
//
// It learns of calls through Record (a gpusvc.Config.OnCall observer) and
// asks for the rest at scrape time through functions it is given, so it
// holds no reference to the server. It serves nothing by itself: Handler
// is mounted on a listener the caller chose (loopback or the overlay).
package metrics

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
)

// Usage is what one identity holds on the host right now.
type Usage struct {
	Identity string // as overlay.Identity.String() names it
	Sessions int
	Buffers  int
	Bytes    int64
}

// Config configures the metrics. The zero value works: call metrics only.
type Config struct {
	// Info reports the backend and its GPUs' telemetry at scrape time; nil
	// means no GPU metrics.
	Info func(ctx context.Context) gpusvc.Info
	// Usage reports live sessions, buffers and bytes per identity at
	// scrape time; nil means no usage metrics. SetUsage sets it later.
	Usage func() []Usage
	// Class names the QoS class a call ran in; nil or "" means "default".
	Class func(gpusvc.CallRecord) string
	// ScrapeTimeout bounds Info during a scrape; 0 means 2s.
	ScrapeTimeout time.Duration
	// NoRuntime leaves out the Go runtime and process collectors.
	NoRuntime bool
}

// Metrics is the host's metrics registry. Record is safe for concurrent use.
type Metrics struct {
	cfg Config
	reg *prometheus.Registry

	calls    *prometheus.CounterVec
	errs     *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	bytesIn  *prometheus.CounterVec
	bytesOut *prometheus.CounterVec

	mu    sync.Mutex
	usage func() []Usage // guarded by mu
}

// LatencyBuckets are the call duration histogram's buckets, in seconds:
// 100µs to ~100s, for kernels from a vector add to a long matrix product.
var LatencyBuckets = prometheus.ExponentialBuckets(100e-6, 2.5, 16)

// New builds the registry.
func New(cfg Config) (*Metrics, error) {
	if cfg.ScrapeTimeout <= 0 {
		cfg.ScrapeTimeout = 2 * time.Second
	}
	m := &Metrics{cfg: cfg, reg: prometheus.NewRegistry(), usage: cfg.Usage}
	callLabels := []string{"caller", "method", "kernel", "class", "code"}
	m.calls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gpumesh_calls_total",
		Help: "Finished calls, by caller, method, kernel, QoS class and gRPC code.",
	}, callLabels)
	m.errs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gpumesh_call_errors_total",
		Help: "Calls that ended with a gRPC code other than OK (denied, over quota, failed).",
	}, callLabels)
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "gpumesh_call_duration_seconds",
		Help:    "Call duration on the host, by method, kernel and QoS class.",
		Buckets: LatencyBuckets,
	}, []string{"method", "kernel", "class"})
	m.bytesIn = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gpumesh_received_bytes_total",
		Help: "Bytes callers sent (requests, uploads), by caller and method.",
	}, []string{"caller", "method"})
	m.bytesOut = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gpumesh_sent_bytes_total",
		Help: "Bytes sent back to callers (results, downloads), by caller and method.",
	}, []string{"caller", "method"})
	cs := []prometheus.Collector{m.calls, m.errs, m.latency, m.bytesIn, m.bytesOut, usageCollector{m}}
	if cfg.Info != nil {
		cs = append(cs, gpuCollector{info: cfg.Info, timeout: cfg.ScrapeTimeout})
	}
	if !cfg.NoRuntime {
		cs = append(cs, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	for _, c := range cs {
		if err := m.reg.Register(c); err != nil {
			return nil, errors.Join(errors.New("metrics: register"), err)
		}
	}
	return m, nil
}

// SetUsage sets the function that reports usage per identity, for when it
// exists only once the server runs.
func (m *Metrics) SetUsage(f func() []Usage) {
	m.mu.Lock()
	m.usage = f
	m.mu.Unlock()
}

// Record counts one finished call. It has the signature of
// gpusvc.Config.OnCall and does not block.
func (m *Metrics) Record(r gpusvc.CallRecord) {
	class := ""
	if m.cfg.Class != nil {
		class = m.cfg.Class(r)
	}
	if class == "" {
		class = "default"
	}
	caller := r.Caller.String()
	if caller == "" {
		caller = "unknown"
	}
	code := r.Code.String()
	k := kernelLabel(r.Kernel)
	m.calls.WithLabelValues(caller, r.Method, k, class, code).Inc()
	if code != "OK" {
		m.errs.WithLabelValues(caller, r.Method, k, class, code).Inc()
	}
	m.latency.WithLabelValues(r.Method, k, class).Observe(r.Duration.Seconds())
	if r.BytesIn > 0 {
		m.bytesIn.WithLabelValues(caller, r.Method).Add(float64(r.BytesIn))
	}
	if r.BytesOut > 0 {
		m.bytesOut.WithLabelValues(caller, r.Method).Add(float64(r.BytesOut))
	}
}

// kernelLabel bounds the kernel label's values: a caller may name any
// kernel (and is refused), but only real ones become series.
func kernelLabel(k string) string {
	if _, ok := kernel.Lookup(k); ok || k == "" || strings.HasPrefix(k, "custom:") && len(k) <= 16 {
		return k
	}
	return "other"
}

// Registry is the underlying registry, to add collectors to.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics in the Prometheus exposition formats.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

var (
	sessionsDesc = prometheus.NewDesc("gpumesh_sessions",
		"Open sessions, by identity.", []string{"caller"}, nil)
	buffersDesc = prometheus.NewDesc("gpumesh_buffers",
		"Live resident buffers, by identity.", []string{"caller"}, nil)
	bufferBytesDesc = prometheus.NewDesc("gpumesh_buffer_bytes",
		"Bytes of resident buffers held, by identity.", []string{"caller"}, nil)
)

// usageCollector reports Usage at scrape time.
type usageCollector struct{ m *Metrics }

func (usageCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- sessionsDesc
	ch <- buffersDesc
	ch <- bufferBytesDesc
}

func (c usageCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.mu.Lock()
	f := c.m.usage
	c.m.mu.Unlock()
	if f == nil {
		return
	}
	seen := map[string]bool{}
	for _, u := range f() {
		if seen[u.Identity] {
			continue // a duplicate would fail the whole scrape
		}
		seen[u.Identity] = true
		ch <- prometheus.MustNewConstMetric(sessionsDesc, prometheus.GaugeValue, float64(u.Sessions), u.Identity)
		ch <- prometheus.MustNewConstMetric(buffersDesc, prometheus.GaugeValue, float64(u.Buffers), u.Identity)
		ch <- prometheus.MustNewConstMetric(bufferBytesDesc, prometheus.GaugeValue, float64(u.Bytes), u.Identity)
	}
}

var (
	gpuLabels   = []string{"gpu", "uuid"}
	gpuInfoDesc = prometheus.NewDesc("gpumesh_gpu_info",
		"A GPU of this host (value 1), with its name, driver and CUDA version and the backend serving it.",
		[]string{"gpu", "uuid", "name", "driver", "cuda", "backend"}, nil)
	gpuMemTotalDesc = prometheus.NewDesc("gpumesh_gpu_memory_total_bytes", "GPU memory size.", gpuLabels, nil)
	gpuMemUsedDesc  = prometheus.NewDesc("gpumesh_gpu_memory_used_bytes", "GPU memory in use.", gpuLabels, nil)
	gpuUtilDesc     = prometheus.NewDesc("gpumesh_gpu_utilization_ratio", "GPU busy fraction over the driver's last sample period (0-1).", gpuLabels, nil)
	gpuTempDesc     = prometheus.NewDesc("gpumesh_gpu_temperature_celsius", "GPU temperature.", gpuLabels, nil)
	gpuPowerDesc    = prometheus.NewDesc("gpumesh_gpu_power_watts", "GPU power draw.", gpuLabels, nil)
)

// gpuCollector reports the backend's telemetry at scrape time.
type gpuCollector struct {
	info    func(context.Context) gpusvc.Info
	timeout time.Duration
}

func (gpuCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{gpuInfoDesc, gpuMemTotalDesc, gpuMemUsedDesc, gpuUtilDesc, gpuTempDesc, gpuPowerDesc} {
		ch <- d
	}
}

func (c gpuCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	info := c.info(ctx)
	seen := map[string]bool{}
	for _, d := range info.Devices {
		idx := strconv.Itoa(d.Index)
		if seen[idx] {
			continue
		}
		seen[idx] = true
		g := func(desc *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, idx, d.UUID)
		}
		ch <- prometheus.MustNewConstMetric(gpuInfoDesc, prometheus.GaugeValue, 1,
			idx, d.UUID, d.Name, d.DriverVersion, d.CUDAVersion, info.Backend)
		if d.MemoryTotal > 0 {
			g(gpuMemTotalDesc, float64(d.MemoryTotal))
		}
		g(gpuMemUsedDesc, float64(d.MemoryUsed))
		if info.Backend != "cpu" {
			// The CPU backend measures none of these.
			g(gpuUtilDesc, float64(d.UtilizationPercent)/100)
			g(gpuTempDesc, float64(d.TemperatureC))
			g(gpuPowerDesc, float64(d.PowerMW)/1000)
		}
	}
}
