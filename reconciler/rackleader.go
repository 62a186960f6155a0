package reconciler

import (
	"context"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

var rackLeaderDesc = prometheus.NewDesc("kiln_rack_has_leader",
	"1 while some agent of the rack holds its election, 0 when none does, for every rack in the inventory (reported by the region leader, so it stays when all of a rack's agents are gone).",
	[]string{"rack"}, nil)

// rackLeaderTimeout bounds the one etcd read a scrape makes.
const rackLeaderTimeout = 2 * time.Second

// rackLeaderCollector reports kiln_rack_has_leader at scrape time from one
// keys-only read of the racks' election prefix; a follower reports
// nothing, and so does a leader that cannot read etcd (the scrape then
// shows no series rather than a wrong 0).
type rackLeaderCollector struct{ r *Region }

func (c rackLeaderCollector) Describe(ch chan<- *prometheus.Desc) { ch <- rackLeaderDesc }

func (c rackLeaderCollector) Collect(ch chan<- prometheus.Metric) {
	cur := c.r.current()
	if cur == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), rackLeaderTimeout)
	defer cancel()
	prefix := c.r.store.Keys().RackElection("")
	resp, err := c.r.store.Client().Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		c.r.log.Warn("kiln_rack_has_leader: cannot read the rack elections", "err", err)
		return
	}
	held := map[string]bool{}
	for _, kv := range resp.Kvs {
		rack, _, _ := strings.Cut(strings.TrimPrefix(string(kv.Key), prefix), "/")
		held[rack] = true
	}
	for _, rack := range cur.rackNames() {
		v := 0.0
		if held[rack] {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(rackLeaderDesc, prometheus.GaugeValue, v, rack)
	}
}

// rackNames lists the racks of the desired inventory.
func (c *controller) rackNames() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.racks))
	for name := range c.racks {
		out = append(out, name)
	}
	return out
}
