package metrics_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gpumesh/gpumesh/gpusvc/metrics"
	"github.com/gpumesh/gpumesh/gpusvc/worker"
)

// TestWorkerCollector: the supervisor's counters as read at scrape time.
func TestWorkerCollector(t *testing.T) {
	st := worker.Stats{Live: 2, Started: 5, Restarts: 1, Crashes: 1, StartFailures: 3, Reaped: 2}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(metrics.WorkerCollector(func() worker.Stats { return st }))
	st.Live = 3 // read at scrape time, not at registration
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range m.GetLabel() {
				name += "/" + l.GetValue()
			}
			got[name] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	want := map[string]float64{
		"gpumesh_gpu_workers": 3, "gpumesh_gpu_worker_events_total/started": 5, "gpumesh_gpu_worker_events_total/restart": 1,
		"gpumesh_gpu_worker_events_total/crash": 1, "gpumesh_gpu_worker_events_total/start_failure": 3, "gpumesh_gpu_worker_events_total/reaped": 2,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %g; want %g (all: %v)", k, got[k], v, got)
		}
	}
}
