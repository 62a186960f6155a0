package inventory

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TimelineEvent is one step of a machine's boot: DHCP seen, offered,
// acked; later TFTP, HTTP and agent reports.
type TimelineEvent struct {
	Time   time.Time `json:"time"`
	Type   string    `json:"type"`
	Detail string    `json:"detail,omitempty"`
}

// Timeline is a machine's recent boot events, oldest first.
type Timeline struct {
	Events []TimelineEvent `json:"events"`
}

// TimelineLimit bounds the events kept per machine.
const TimelineLimit = 100

// AppendTimeline adds events to a machine's timeline on rack, keeping
// the newest TimelineLimit. Events are kept in time order (stable for
// equal times): DHCP, TFTP and HTTP report in batches that interleave, so
// a batch may hold events older than ones already stored. A non-zero lease is attached to the key (an
// unknown MAC's timeline ends with its lease).
func (s *Store) AppendTimeline(ctx context.Context, rack, machine string, lease clientv3.LeaseID, events ...TimelineEvent) error {
	key := s.keys.Timeline(rack, machine)
	for attempt := 0; ; attempt++ {
		resp, err := s.cli.Get(ctx, key)
		if err != nil {
			return fmt.Errorf("read timeline %s: %w", machine, err)
		}
		var t Timeline
		var rev int64
		if len(resp.Kvs) > 0 {
			rev = resp.Kvs[0].ModRevision
			if err := json.Unmarshal(resp.Kvs[0].Value, &t); err != nil {
				t = Timeline{} // start afresh rather than never record again
			}
		}
		t.Events = append(t.Events, events...)
		slices.SortStableFunc(t.Events, func(a, b TimelineEvent) int { return a.Time.Compare(b.Time) })
		if n := len(t.Events) - TimelineLimit; n > 0 {
			t.Events = append([]TimelineEvent(nil), t.Events[n:]...)
		}
		b, err := json.Marshal(t)
		if err != nil {
			return err
		}
		tr, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
			Then(clientv3.OpPut(key, string(b), withLease(lease)...)).Commit()
		if err != nil {
			return fmt.Errorf("write timeline %s: %w", machine, err)
		}
		if tr.Succeeded {
			return nil
		}
		if attempt == 10 {
			return fmt.Errorf("write timeline %s: too many concurrent writers", machine)
		}
	}
}
