package reconciler

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	leader        prometheus.Gauge
	reconciles    *prometheus.CounterVec
	duration      prometheus.Histogram
	phaseDuration *prometheus.HistogramVec
	depth         prometheus.Gauge
	batch         prometheus.Histogram
	failures      *prometheus.CounterVec
}

var machinesDesc = prometheus.NewDesc("kiln_machines", "Machines in the inventory by lifecycle phase and rack (reported by the region leader).",
	[]string{"phase", "rack"}, nil)

func newMetrics(reg prometheus.Registerer, r *Region) *metrics {
	m := &metrics{
		leader: prometheus.NewGauge(prometheus.GaugeOpts{Name: "kiln_region_leader",
			Help: "1 while this server leads the region and reconciles."}),
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kiln_reconcile_total",
			Help: "Machine reconciles by result: success (written), unchanged, conflict (someone wrote first; retried), error."}, []string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "kiln_reconcile_duration_seconds",
			Help: "Time to decide and write one machine's next step.", Buckets: prometheus.ExponentialBuckets(0.0005, 4, 9)}),
		phaseDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "kiln_phase_duration_seconds",
			Help:    "Time machines spent in each lifecycle phase, observed when they leave it.",
			Buckets: []float64{1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200}}, []string{"phase"}),
		depth: prometheus.NewGauge(prometheus.GaugeOpts{Name: "kiln_reconcile_queue_depth",
			Help: "Machines waiting for a reconcile worker."}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "kiln_reconcile_write_batch_size",
			Help: "Machine decisions written per etcd transaction (group commit).", Buckets: []float64{1, 2, 4, 8, 16, 32, 64}}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kiln_machine_failures_total",
			Help: "Machines that entered a failed phase (failed-commissioning, ...), by that phase, counted by the leader that wrote it."}, []string{"phase"}),
	}
	for _, res := range []string{"success", "unchanged", "conflict", "error"} {
		m.reconciles.WithLabelValues(res)
	}
	for _, p := range Phases {
		m.phaseDuration.WithLabelValues(p)
		if strings.HasPrefix(p, FailedPrefix) {
			m.failures.WithLabelValues(p)
		}
	}
	reg.MustRegister(m.leader, m.reconciles, m.duration, m.phaseDuration, m.depth, m.batch, m.failures, machinesCollector{r}, rackLeaderCollector{r}, driftCollector{r}, cablingCollector{r}, rolloutCollector{r})
	return m
}

// machinesCollector reports kiln_machines from the leader's caches at
// scrape time; a follower reports nothing.
type machinesCollector struct{ r *Region }

func (c machinesCollector) Describe(ch chan<- *prometheus.Desc) { ch <- machinesDesc }

func (c machinesCollector) Collect(ch chan<- prometheus.Metric) {
	cur := c.r.current()
	if cur == nil {
		return
	}
	counts := cur.snapshotCounts()
	racks := map[string]bool{}
	for k := range counts {
		racks[k[1]] = true
	}
	for rack := range racks { // every phase of every rack, zeros included
		for _, p := range append([]string{"new"}, Phases...) {
			ch <- prometheus.MustNewConstMetric(machinesDesc, prometheus.GaugeValue, float64(counts[[2]string{p, rack}]), p, rack)
		}
	}
}
