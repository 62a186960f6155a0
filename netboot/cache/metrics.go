package cache

import "github.com/prometheus/client_golang/prometheus"

// Fetch results, the values of kiln_image_cache_fetch_total's result label.
const (
	resultOK       = "ok"            // fetched from the origin and verified
	resultMismatch = "hash_mismatch" // fetched, but the hash did not match
	resultError    = "error"         // the fetch failed (network, HTTP status, disk)
	resultSeeded   = "seeded"        // found in a seed folder, or already on disk
)

// Metrics are the image cache's metrics, registered once per registry.
type Metrics struct {
	bytes     prometheus.Gauge
	fetches   *prometheus.CounterVec
	fetchTime prometheus.Histogram
	served    prometheus.Counter
	queue     prometheus.Gauge
	refused   prometheus.Counter
}

// NewMetrics registers the image cache metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		bytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kiln_image_cache_bytes",
			Help: "Bytes of verified images stored in the cache.",
		}),
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_image_cache_fetch_total",
			Help: "Image fetches by result (ok, hash_mismatch, error, seeded).",
		}, []string{"result"}),
		fetchTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kiln_image_cache_fetch_seconds",
			Help:    "Time to fetch and verify an image, from its origin or a seed folder.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 16), // 10ms … 5.5min
		}),
		served: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kiln_http_boot_bytes_total",
			Help: "Bytes of images sent by the HTTP boot handler.",
		}),
		queue: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kiln_http_image_queue",
			Help: "Image requests waiting for a transfer slot.",
		}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kiln_http_image_refused_total",
			Help: "Image requests refused because the client was not on one of the rack's subnets (nor loopback).",
		}),
	}
	for _, r := range []string{resultOK, resultMismatch, resultError, resultSeeded} {
		m.fetches.WithLabelValues(r)
	}
	reg.MustRegister(m.bytes, m.fetches, m.fetchTime, m.served, m.queue, m.refused)
	return m
}
