package inventory

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Event is one thing that happened to a machine: a lifecycle transition,
// an error, a retry.
type Event struct {
	Time    time.Time `json:"time"`
	Machine string    `json:"machine"`
	Type    string    `json:"type"` // Normal or Warning
	Reason  string    `json:"reason"`
	Message string    `json:"message,omitempty"`
	From    string    `json:"from,omitempty"` // phase before
	To      string    `json:"to,omitempty"`   // phase after
}

// Events lists the events of one machine (all when machine is ""),
// oldest first.
func (s *Store) Events(ctx context.Context, machine string) ([]Event, int64, error) {
	var out []Event
	rev, err := s.RangeAt(ctx, s.keys.Events(machine), 0, func(key string, v []byte) error {
		var e Event
		if err := json.Unmarshal(v, &e); err != nil {
			return fmt.Errorf("decode %s: %w", key, err)
		}
		out = append(out, e)
		return nil
	})
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out, rev, err
}

// CompactEvents deletes all but the newest keep events of a machine.
func (s *Store) CompactEvents(ctx context.Context, machine string, keep int) (int, error) {
	resp, err := s.cli.Get(ctx, s.keys.Events(machine), clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return 0, fmt.Errorf("list events of %s: %w", machine, err)
	}
	extra := len(resp.Kvs) - keep
	if extra <= 0 {
		return 0, nil
	}
	last := string(resp.Kvs[extra-1].Key)
	del, err := s.cli.Delete(ctx, s.keys.Events(machine), clientv3.WithRange(last+"\x00"))
	if err != nil {
		return 0, fmt.Errorf("compact events of %s: %w", machine, err)
	}
	return int(del.Deleted), nil
}

// PutEvent records one event written outside the region leader's status
// writes (an API action: who asked, with which token), living ttl (an
// etcd lease of its own; 0: until compacted).
func (s *Store) PutEvent(ctx context.Context, ev Event, ttl time.Duration) error {
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	var opts []clientv3.OpOption
	if ttl > 0 {
		l, err := s.cli.Grant(ctx, int64(ttl/time.Second))
		if err != nil {
			return fmt.Errorf("event lease: %w", err)
		}
		opts = append(opts, clientv3.WithLease(l.ID))
	}
	if _, err := s.cli.Put(ctx, s.keys.Event(ev.Machine, ev.Time, 999), string(b), opts...); err != nil {
		return fmt.Errorf("put event of %s: %w", ev.Machine, err)
	}
	return nil
}
