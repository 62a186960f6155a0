package dhcp

import (
	"errors"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Packet types, the values of the type label.
type msgKind uint8

const (
	kindDiscover msgKind = iota
	kindRequest
	kindRelease
	kindDecline
	kindInform
	kindOther
	kindMalformed
	nKinds
)

var kindNames = [nKinds]string{"discover", "request", "release", "decline", "inform", "other", "malformed"}

// Results, the values of the result label.
type result uint8

const (
	resOffered result = iota
	resAcked
	resNaked
	resIgnored
	resError
	resHandled // a RELEASE or DECLINE acted on (they get no reply)
	nResults
)

var resultNames = [nResults]string{"offered", "acked", "naked", "ignored", "error", "handled"}

// sensible are the label sets created at start, so that rates start at 0.
var sensible = map[msgKind][]result{
	kindDiscover:  {resOffered, resIgnored, resError},
	kindRequest:   {resAcked, resNaked, resIgnored, resError},
	kindRelease:   {resHandled, resIgnored},
	kindDecline:   {resHandled, resIgnored},
	kindInform:    {resAcked, resIgnored},
	kindOther:     {resIgnored},
	kindMalformed: {resIgnored},
}

// Metrics are the DHCP server's metrics, registered once per registry.
type Metrics struct {
	packets   *prometheus.CounterVec
	counters  [nKinds][nResults]prometheus.Counter
	response  prometheus.Histogram
	saves     *prometheus.CounterVec
	saveTime  prometheus.Histogram
	batchSize prometheus.Histogram
	pools     poolCollector
	// relayDropped counts relayed packets refused, by reason.
	relayDropped *prometheus.CounterVec
	// macLimited counts requests dropped by the per-MAC rate limit.
	macLimited prometheus.Counter
}

// NewMetrics registers the DHCP metrics.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		packets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_dhcp_packets_total",
			Help: "DHCP requests by type (discover, request, release, decline, inform, other, malformed) and result (offered, acked, naked, ignored, error, handled).",
		}, []string{"type", "result"}),
		response: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kiln_dhcp_response_seconds",
			Help:    "Time from a request's arrival to its reply being sent, including the wait for the lease to be stored.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16), // 100µs … 3.3s
		}),
		saves: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_dhcp_lease_saves_total",
			Help: "Batched lease saves to the store by result (ok, error, not_leader).",
		}, []string{"result"}),
		saveTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kiln_dhcp_lease_save_seconds",
			Help:    "Time of one batched lease save.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14), // 0.5ms … 4s
		}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kiln_dhcp_lease_save_batch_size",
			Help:    "Leases per batched save.",
			Buckets: []float64{1, 2, 5, 10, 20, 50, 100, 200},
		}),
		relayDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_dhcp_relay_dropped_total",
			Help: "Relayed requests dropped by reason (unknown_giaddr, giaddr_other_link, relay_not_allowed, relay_to_proxy_port).",
		}, []string{"reason"}),
		macLimited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kiln_dhcp_rate_limited_total",
			Help: "Requests dropped because their MAC sent more than its rate.",
		}),
	}
	for _, r := range relayReasons {
		m.relayDropped.WithLabelValues(r)
	}
	m.pools.leases = prometheus.NewDesc("kiln_dhcp_leases", "Active leases (reservations and unexpired dynamic leases) by subnet.", []string{"subnet"}, nil)
	m.pools.free = prometheus.NewDesc("kiln_dhcp_pool_free", "Free addresses of the subnet's dynamic range.", []string{"subnet"}, nil)
	m.pools.size = prometheus.NewDesc("kiln_dhcp_pool_size", "Usable addresses of the subnet's dynamic range (free plus used).", []string{"subnet"}, nil)
	for k, rs := range sensible {
		for _, r := range rs {
			m.counters[k][r] = m.packets.WithLabelValues(kindNames[k], resultNames[r])
		}
	}
	for _, r := range []string{"ok", "error", "not_leader"} {
		m.saves.WithLabelValues(r)
	}
	reg.MustRegister(m.packets, m.response, m.saves, m.saveTime, m.batchSize, &m.pools, m.relayDropped, m.macLimited)
	return m
}

func (m *Metrics) packet(k msgKind, r result) {
	if c := m.counters[k][r]; c != nil {
		c.Inc()
		return
	}
	m.packets.WithLabelValues(kindNames[k], resultNames[r]).Inc()
}

func (m *Metrics) observeSave(d time.Duration, n int, err error) {
	m.saveTime.Observe(d.Seconds())
	m.batchSize.Observe(float64(n))
	switch {
	case err == nil:
		m.saves.WithLabelValues("ok").Inc()
	case errors.Is(err, ErrNotLeader):
		m.saves.WithLabelValues("not_leader").Inc()
	default:
		m.saves.WithLabelValues("error").Inc()
	}
}

// poolStat is one subnet's numbers at scrape time.
type poolStat struct {
	subnet             string
	leases, free, size int
}

// poolCollector reports kiln_dhcp_leases and kiln_dhcp_pool_free from
// the serving Server's pools, computed at scrape time.
type poolCollector struct {
	leases, free, size *prometheus.Desc
	source             atomic.Pointer[func() []poolStat]
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.leases
	ch <- c.free
	ch <- c.size
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.source.Load()
	if f == nil {
		return
	}
	for _, s := range (*f)() {
		ch <- prometheus.MustNewConstMetric(c.leases, prometheus.GaugeValue, float64(s.leases), s.subnet)
		ch <- prometheus.MustNewConstMetric(c.free, prometheus.GaugeValue, float64(s.free), s.subnet)
		ch <- prometheus.MustNewConstMetric(c.size, prometheus.GaugeValue, float64(s.size), s.subnet)
	}
}
