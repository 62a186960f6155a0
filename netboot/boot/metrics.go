package boot

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Request kinds, the kind label of the metrics.
const (
	kindScript   = "script"
	kindMetadata = "metadata"
	kindAgent    = "agent"
	kindOS       = "os"
	kindOther    = "other"
)

var (
	metricKinds = []string{kindScript, kindMetadata, kindAgent, kindOS, kindOther}
	// metricCodes are the codes the server answers with, pre-initialised.
	metricCodes = []int{200, 204, 400, 403, 404, 405, 413, 415, 500, 503}
)

// Metrics are the boot server's Prometheus metrics.
type Metrics struct {
	requests *prometheus.CounterVec
	seconds  *prometheus.HistogramVec
}

// NewMetrics registers the metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_http_boot_requests_total",
			Help: "HTTP boot server requests by kind (script, metadata, agent, os, other) and status code.",
		}, []string{"kind", "code"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kiln_http_boot_request_seconds",
			Help:    "Time to answer an HTTP boot server request, by kind.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14), // 0.5ms … 4s
		}, []string{"kind"}),
	}
	for _, k := range metricKinds {
		for _, c := range metricCodes {
			m.requests.WithLabelValues(k, strconv.Itoa(c))
		}
		m.seconds.WithLabelValues(k)
	}
	reg.MustRegister(m.requests, m.seconds)
	return m
}
