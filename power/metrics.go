package power

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the power metrics, registered once per registry.
type Metrics struct {
	ops       *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	reachable *prometheus.GaugeVec
	breaker   *prometheus.GaugeVec
	state     *prometheus.GaugeVec
}

// Operation results, the values of the result label.
const (
	resultOK          = "ok"
	resultError       = "error"
	resultTimeout     = "timeout"
	resultBreakerOpen = "breaker_open"
	resultAuth        = "auth"
)

// Operations, the values of the op label.
var ops = []string{"on", "off", "soft_off", "cycle", "status", "set_boot"}

// NewMetrics registers the power metrics.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_power_operations_total",
			Help: "Power operations by driver, operation and result (ok, error, timeout, auth, breaker_open); retries are counted once per attempt.",
		}, []string{"driver", "op", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kiln_power_operation_duration_seconds",
			Help:    "Time of one power operation attempt against a BMC.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2.5, 10),
		}, []string{"driver", "op"}),
		reachable: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kiln_power_bmc_reachable",
			Help: "1 if the machine's BMC answered its last operation (even with an error), 0 if it could not be reached.",
		}, []string{"machine"}),
		breaker: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kiln_power_breaker_state",
			Help: "Circuit breaker of the machine's BMC: 0 closed, 1 half-open (one probe allowed), 2 open (calls fail fast).",
		}, []string{"machine"}),
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kiln_power_state",
			Help: "Observed power state: 1 on, 0 off, -1 unknown.",
		}, []string{"machine"}),
	}
	reg.MustRegister(m.ops, m.duration, m.reachable, m.breaker, m.state)
	return m
}

// initDriver pre-creates every series of a driver, so rates start at 0.
func (m *Metrics) initDriver(driver string) {
	for _, op := range ops {
		m.duration.WithLabelValues(driver, op)
		for _, r := range []string{resultOK, resultError, resultTimeout, resultBreakerOpen, resultAuth} {
			m.ops.WithLabelValues(driver, op, r)
		}
	}
}
