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
