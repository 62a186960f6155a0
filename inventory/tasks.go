package inventory

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Power task actions.
const (
	// TaskNetboot sets the next boot to the network and powers the
	// machine on, or cycles it when it is on.
	TaskNetboot = "netboot"
	// TaskDiskboot sets the next boot to the disk and powers the machine
	// on, or cycles it when it is on.
	TaskDiskboot = "diskboot"
	// TaskOff powers the machine off, hard.
	TaskOff = "off"
)

// Power task states.
const (
	TaskPending = "pending" // written by the region, not yet done
	// TaskRunning: a rack leader started it. A successor that finds it
	// checks the power state instead of cycling the machine again.
	TaskRunning = "running"
	TaskDone    = "done"   // the rack did it
	TaskFailed  = "failed" // the rack gave up; Error says why
	// TaskManual: the machine has no BMC Kiln can drive; a person must
	// act (Error says what). The region keeps waiting.
	TaskManual = "manual"
)

// PowerTask is what the region asks a rack leader to do to a machine's
// power, at tasks/<rack>/<machine>. One task per machine at a time: a new
// one replaces the old. The rack writes the outcome into the same key.
type PowerTask struct {
	ID      string `json:"id"`
	Machine string `json:"machine"`
	Action  string `json:"action"`
	// Purpose is the boot purpose the machine network-boots with after
	// a netboot (commission, deploy, erase), for logs and timelines.
	Purpose   string    `json:"purpose,omitempty"`
	CreatedAt time.Time `json:"createdAt"`

	State string `json:"state"`
	Error string `json:"error,omitempty"`
	// Power is the power state the rack saw while doing the task.
	Power  string    `json:"power,omitempty"`
	Agent  string    `json:"agent,omitempty"` // the rack agent that did it
	DoneAt time.Time `json:"doneAt,omitzero"`
}

// Finished reports whether the rack has ended the task.
func (t *PowerTask) Finished() bool {
	return t.State == TaskDone || t.State == TaskFailed || t.State == TaskManual
}

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

// RangeRevs is RangeAt that also passes each key's ModRevision, for
// callers that write back with a compare on it.
func (s *Store) RangeRevs(ctx context.Context, prefix string, rev int64, fn func(key string, value []byte, modRev int64) error) (int64, error) {
	if rev == 0 {
		resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return 0, err
		}
		rev = resp.Header.Revision
	}
	_, err := s.rangeKVs(ctx, prefix, rev, func(kv *mvccpb.KeyValue) error {
		return fn(string(kv.Key), kv.Value, kv.ModRevision)
	})
	return rev, err
}

// Fence is a leader's election key: a write that compares it succeeds
// only while that leader's key is the one that won (a fencing token).
type Fence struct {
	Key string
	Rev int64 // the key's CreateRevision
}

// Held is the compare that makes a transaction fenced.
func (f Fence) Held() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(f.Key), "=", f.Rev)
}

// HeldIn reports whether a Get of the fence key (a transaction's Else)
// shows the fence still held: false means the leader was deposed.
func (f Fence) HeldIn(get *etcdserverpb.RangeResponse) bool {
	return get != nil && len(get.Kvs) > 0 && get.Kvs[0].CreateRevision == f.Rev
}

// EachEvent reads a watch until ctx ends or the watch closes, calling fn
// for every event; a watch error (compaction, etcd lost) ends it,
// wrapped with what was watched.
func EachEvent(ctx context.Context, wc clientv3.WatchChan, what string, fn func(*clientv3.Event)) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case resp, ok := <-wc:
			if !ok {
				return nil
			}
			if err := resp.Err(); err != nil {
				return fmt.Errorf("watch %s: %w", what, err)
			}
			for _, ev := range resp.Events {
				fn(ev)
			}
		}
	}
}
