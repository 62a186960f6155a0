package netlab

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Failure drills: finding the leaders to kill, reading the rack agents'
// metrics, and making a vBMC misbehave.

// RegionLeader waits until one running server says it leads the region
// (kiln_region_leader 1 on its /metrics) and returns its index.
func (v *VMLab) RegionLeader(except int, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for {
		for i, s := range v.Servers {
			if i == except || s.Exited() {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			m, err := v.HTTPGet(ctx, v.MetricsURL(i))
			cancel()
			if err == nil && MetricValue(m, "kiln_region_leader") == "1" {
				return i, nil
			}
		}
		if time.Now().After(deadline) {
			return -1, fmt.Errorf("no region leader among the running servers after %s: %w", timeout, ErrTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// RackMetrics scrapes rack agent i's /metrics.
func (v *VMLab) RackMetrics(i int) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return v.HTTPGet(ctx, "http://127.0.0.1:"+strconv.Itoa(RackPort+i)+"/metrics")
}

// RackIndex is the index of a rack agent's process in Racks.
func (v *VMLab) RackIndex(p *Proc) int {
	for i, r := range v.Racks {
		if r == p {
			return i
		}
	}
	return -1
}

// SetFaults replaces the faults of a VM's vBMC through its admin API,
// e.g. `{"failNext": 2, "latency": "300ms"}`; "" clears them.
func (v *VMLab) SetFaults(vm, faults string) error {
	method := http.MethodPut
	if faults == "" {
		method = http.MethodDelete
	}
	_, err := v.vbmcAdmin(vm, method, "/vbmc/faults", faults)
	return err
}

// SumMetric adds up the samples of a metric whose labels contain every
// given label pair (e.g. `op="off"`).
func SumMetric(metrics, name string, labels ...string) float64 {
	var sum float64
	for _, line := range strings.Split(metrics, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(line, l) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		f := strings.Fields(line)
		if x, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum += x
		}
	}
	return sum
}
