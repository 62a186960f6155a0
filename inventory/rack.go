package inventory

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Discovered is an unknown MAC that network-booted on a rack's subnet.
type Discovered struct {
	MAC         string    `json:"mac"`
	Rack        string    `json:"rack"`
	Subnet      string    `json:"subnet,omitempty"`
	IP          string    `json:"ip,omitempty"`
	FirstSeen   time.Time `json:"firstSeen"`
	LastSeen    time.Time `json:"lastSeen"`
	Arch        string    `json:"arch,omitempty"`
	VendorClass string    `json:"vendorClass,omitempty"`
	CircuitID   string    `json:"circuitID,omitempty"`
	Relay       string    `json:"relay,omitempty"`
}

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
// the newest TimelineLimit. A non-zero lease is attached to the key (an
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
		if n := len(t.Events) - TimelineLimit; n > 0 {
			t.Events = append([]TimelineEvent(nil), t.Events[n:]...)
		}
		b, err := json.Marshal(t)
		if err != nil {
			return err
		}
		var opts []clientv3.OpOption
		if lease != clientv3.NoLease {
			opts = append(opts, clientv3.WithLease(lease))
		}
		tr, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
			Then(clientv3.OpPut(key, string(b), opts...)).Commit()
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

// PutDiscovered records a rack's discovered MACs, each on its lease (a
// record without one, NoLease, is kept until deleted), in transactions
// within etcd's limits.
func (s *Store) PutDiscovered(ctx context.Context, ds []Discovered, leases map[string]clientv3.LeaseID) error {
	var ops []clientv3.Op
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		_, err := s.cli.Txn(ctx).Then(ops...).Commit()
		ops = ops[:0]
		return err
	}
	for _, d := range ds {
		if d.Rack == "" || d.MAC == "" {
			return fmt.Errorf("record discovered MAC %q: rack and MAC are required", d.MAC)
		}
		b, err := json.Marshal(d)
		if err != nil {
			return err
		}
		var opts []clientv3.OpOption
		if id := leases[d.MAC]; id != clientv3.NoLease {
			opts = append(opts, clientv3.WithLease(id))
		}
		ops = append(ops, clientv3.OpPut(s.keys.Discovered(d.Rack, d.MAC), string(b), opts...))
		if len(ops) == defaultMaxOps {
			if err := flush(); err != nil {
				return fmt.Errorf("record discovered MACs: %w", err)
			}
		}
	}
	if err := flush(); err != nil {
		return fmt.Errorf("record discovered MACs: %w", err)
	}
	return nil
}

// ListDiscovered reads every rack's discovered MACs.
func (s *Store) ListDiscovered(ctx context.Context) ([]Discovered, error) {
	return ListJSON[Discovered](ctx, s, s.keys.Discovered("", ""))
}

// WatchPrefix reports changes below prefix (a full key prefix, e.g.
// Keys().Lease(rack, "", "")) after revision rev.
func (s *Store) WatchPrefix(ctx context.Context, prefix string, rev int64) clientv3.WatchChan {
	return s.cli.Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
}

// RangeAt calls fn for every key below prefix at revision rev (0: now)
// and returns the revision read.
func (s *Store) RangeAt(ctx context.Context, prefix string, rev int64, fn func(key string, value []byte) error) (int64, error) {
	return s.RangeRevs(ctx, prefix, rev, func(k string, v []byte, _ int64) error { return fn(k, v) })
}

// PutImageStatus records an Image's state on one rack.
func (s *Store) PutImageStatus(ctx context.Context, image string, st ImageStatus) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if st.Rack == "" {
		return fmt.Errorf("image status of %s: no rack", image)
	}
	_, err = s.cli.Put(ctx, s.keys.ImageStatus(st.Rack, image), string(b))
	return err
}

// ImageStatuses reads every rack's record of every Image, by image name.
func (s *Store) ImageStatuses(ctx context.Context) (map[string][]ImageStatus, error) {
	out := map[string][]ImageStatus{}
	_, err := s.rangeAll(ctx, s.keys.ImageStatus("", ""), 0, func(k, v []byte) error {
		_, image, ok := s.keys.SplitImageStatus(string(k))
		if !ok {
			return nil
		}
		var st ImageStatus
		if err := json.Unmarshal(v, &st); err != nil {
			return fmt.Errorf("decode %s: %w", k, err)
		}
		out[image] = append(out[image], st)
		return nil
	})
	return out, err
}
