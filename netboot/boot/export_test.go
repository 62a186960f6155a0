package boot

import "github.com/prometheus/client_golang/prometheus"

// Unexported parts the external tests (package boot_test) look at.

// LimiterSizes are how many MACs and source addresses the script rate
// limiters hold.
func (s *Server) LimiterSizes() (macs, addrs int) { return s.perMAC.Len(), s.perIP.Len() }

// MetricKinds and MetricCodes are the pre-initialised label values.
var (
	MetricKinds = metricKinds
	MetricCodes = metricCodes
)

// DecodeOSReport is decodeOSReport, for the fuzz target.
var DecodeOSReport = decodeOSReport

// Requests is the request counter of kind and code.
func (m *Metrics) Requests(kind, code string) prometheus.Counter {
	return m.requests.WithLabelValues(kind, code)
}
