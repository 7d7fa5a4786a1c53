package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gpumesh/gpumesh/gpusvc/worker"
)

// WorkerCollector exports a GPU worker supervisor's counters (processes
// running, starts, restarts, crashes, failed starts, idle stops), read at
// scrape time through stats. Register it on Registry when the backend is
// a *worker.Supervisor.
func WorkerCollector(stats func() worker.Stats) prometheus.Collector {
	return workerCollector{stats: stats}
}

type workerCollector struct {
	stats func() worker.Stats
}

var (
	workerLiveDesc = prometheus.NewDesc("gpumesh_gpu_workers", "GPU worker processes running.", nil, nil)
	workerEvDesc   = prometheus.NewDesc("gpumesh_gpu_worker_events_total", "GPU worker starts, restarts, crashes, failed starts and idle stops.", []string{"event"}, nil)
)

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
