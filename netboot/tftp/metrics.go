package tftp

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Results of a request, the Result of an Event and the result label of
// kiln_tftp_transfers_total.
const (
	ResultOK       = "ok"
	ResultNotFound = "not_found"
	ResultDenied   = "denied"
	ResultError    = "error"
	ResultBusy     = "busy"
	// ResultPeerLimit: the source address already held MaxPerPeer transfers.
	ResultPeerLimit = "peer_limit"
)

var results = []string{ResultOK, ResultNotFound, ResultDenied, ResultError, ResultBusy, ResultPeerLimit}

// Reasons of kiln_tftp_refusals_total: a request refused for lack of a
// slot (busy, peer_limit), or a transfer whose slot was taken back because
// its first block was not acknowledged in time (first_block_timeout).
const (
	RefusedBusy       = "busy"
	RefusedPeerLimit  = "peer_limit"
	RefusedFirstBlock = "first_block_timeout"
)

var refusalReasons = []string{RefusedBusy, RefusedPeerLimit, RefusedFirstBlock}

// otherFile is the file label of requests for names that are not files in
// the root, so that clients cannot grow the label set at will.
const otherFile = "other"

// Metrics are the server's Prometheus collectors.
type Metrics struct {
	transfers *prometheus.CounterVec
	refusals  *prometheus.CounterVec
	bytes     prometheus.Counter
	duration  prometheus.Histogram
}

// NewMetrics creates the collectors and registers them on reg (nil: not
// registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		transfers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_tftp_transfers_total",
			Help: "TFTP read requests by file (base name of a file in the root, else other) and result (ok, not_found, denied, error, busy, peer_limit).",
		}, []string{"file", "result"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_tftp_refusals_total",
			Help: "TFTP transfers refused or cut to protect the slots, by reason (busy: no slot left; peer_limit: the source address holds too many; first_block_timeout: the first block was not acknowledged in time and the slot was taken back).",
		}, []string{"reason"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kiln_tftp_bytes_total",
			Help: "File bytes sent by TFTP transfers, complete or not.",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kiln_tftp_transfer_seconds",
			Help:    "Time of a TFTP transfer that was started, from the request to the last acknowledgement or the failure.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16), // 1ms … 33s
		}),
	}
	for _, r := range results {
		m.transfers.WithLabelValues(otherFile, r)
	}
	for _, r := range refusalReasons {
		m.refusals.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.transfers, m.refusals, m.bytes, m.duration)
	}
	return m
}

func (m *Metrics) observe(file, result string, bytes int64, took time.Duration, started bool) {
	if m == nil {
		return
	}
	m.transfers.WithLabelValues(file, result).Inc()
	m.bytes.Add(float64(bytes))
	if started {
		m.duration.Observe(took.Seconds())
	}
}

func (m *Metrics) refused(reason string) {
	if m == nil {
		return
	}
	m.refusals.WithLabelValues(reason).Inc()
}
