package inventory

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/kilnhq/kiln/inventory/keys"
	"github.com/kilnhq/kiln/spec"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Snapshot is the desired state of one applied revision.
type Snapshot struct {
	Pointer   Pointer
	Revision  int64 // etcd revision the snapshot was read at
	Inventory *spec.Inventory
	Unmanaged map[string]Unmanaged
}

// Current returns the pointer to the applied generation and the etcd
// revision it was read at. ErrNotFound means nothing was applied yet.
func (s *Store) Current(ctx context.Context) (Pointer, int64, error) {
	return s.currentAt(ctx, 0)
}

// currentAt is Current at etcd revision rev (0: the latest).
func (s *Store) currentAt(ctx context.Context, rev int64) (Pointer, int64, error) {
	resp, err := s.cli.Get(ctx, s.keys.DesiredPointer(), clientv3.WithRev(rev))
	if err != nil {
		return Pointer{}, 0, err
	}
	if len(resp.Kvs) == 0 {
		return Pointer{}, resp.Header.Revision, fmt.Errorf("desired state: nothing applied yet: %w", ErrNotFound)
	}
	var p Pointer
	if err := json.Unmarshal(resp.Kvs[0].Value, &p); err != nil {
		return Pointer{}, 0, fmt.Errorf("decode desired pointer: %w", err)
	}
	if rev > 0 {
		return p, rev, nil // the header has the latest revision, not rev
	}
	return p, resp.Header.Revision, nil
}

// Snapshot reads the applied revision: only the given kinds (all when none
// are given; KindUnmanaged selects the unmanaged markers).
func (s *Store) Snapshot(ctx context.Context, kinds ...string) (*Snapshot, error) {
	for attempt := 0; ; attempt++ {
		snap, err := s.snapshot(ctx, kinds)
		// A compaction between reading the pointer and the generation
		// only means: read again.
		if errors.Is(err, rpctypes.ErrCompacted) && attempt < 3 {
			continue
		}
		return snap, err
	}
}

// SnapshotAt is Snapshot as of etcd revision rev: what a watcher that has
// seen every change up to rev holds.
func (s *Store) SnapshotAt(ctx context.Context, rev int64, kinds ...string) (*Snapshot, error) {
	return s.snapshotAt(ctx, rev, kinds)
}

func (s *Store) snapshot(ctx context.Context, kinds []string) (*Snapshot, error) {
	return s.snapshotAt(ctx, 0, kinds)
}

func (s *Store) snapshotAt(ctx context.Context, at int64, kinds []string) (*Snapshot, error) {
	p, rev, err := s.currentAt(ctx, at)
	if err != nil {
		return nil, err
	}
	if len(kinds) == 0 {
		kinds = append(append([]string(nil), spec.Kinds...), KindUnmanaged)
	}
	snap := &Snapshot{Pointer: p, Revision: rev, Inventory: spec.NewInventory(), Unmanaged: map[string]Unmanaged{}}
	for _, kind := range kinds {
		prefix := s.keys.GenSegment(p.Generation, segment(kind))
		_, err := s.rangeAll(ctx, prefix, rev, func(k, v []byte) error {
			return decodeInto(snap, kind, v)
		})
		if err != nil {
			return nil, fmt.Errorf("read %s of generation %s: %w", strings.ToLower(kind)+"s", p.Generation, err)
		}
	}
	return snap, nil
}

// segment is a kind's folder inside a generation.
func segment(kind string) string {
	if kind == KindUnmanaged {
		return keys.UnmanagedSegment
	}
	return spec.Plural(kind)
}

func decodeInto(snap *Snapshot, kind string, v []byte) error {
	inv := snap.Inventory
	var err error
	switch kind {
	case spec.KindRack:
		var o spec.Rack
		if err = json.Unmarshal(v, &o); err == nil {
			inv.Racks[o.Metadata.Name] = &o
		}
	case spec.KindSubnet:
		var o spec.Subnet
		if err = json.Unmarshal(v, &o); err == nil {
			inv.Subnets[o.Metadata.Name] = &o
		}
	case spec.KindImage:
		var o spec.Image
		if err = json.Unmarshal(v, &o); err == nil {
			inv.Images[o.Metadata.Name] = &o
		}
	case spec.KindProfile:
		var o spec.Profile
		if err = json.Unmarshal(v, &o); err == nil {
			inv.Profiles[o.Metadata.Name] = &o
		}
	case spec.KindMachine:
		var o spec.Machine
		if err = json.Unmarshal(v, &o); err == nil {
			inv.Machines[o.Metadata.Name] = &o
		}
	case KindUnmanaged:
		var o Unmanaged
		if err = json.Unmarshal(v, &o); err == nil {
			snap.Unmanaged[o.Name] = o
		}
	default:
		return fmt.Errorf("unknown kind %q", kind)
	}
	if err != nil {
		return fmt.Errorf("decode %s: %w", kind, err)
	}
	return nil
}

// Update reads key, lets fn change its value (nil when absent) and writes
// it back only if nobody wrote it meanwhile (ModRevision compare),
// retrying on conflict until ctx ends. fn returning nil bytes writes
// nothing. opts go to the put (e.g. clientv3.WithLease).
func (s *Store) Update(ctx context.Context, key string, fn func(old []byte) ([]byte, error), opts ...clientv3.OpOption) error {
	for attempt := 0; ; attempt++ {
		if attempt > 2 {
			select { // contended: back off a little, with jitter
			case <-ctx.Done():
				return fmt.Errorf("write %s: %w (%w)", key, ErrConflict, ctx.Err())
			case <-time.After(time.Duration(rand.IntN(5*min(attempt, 20))+1) * time.Millisecond):
			}
		}
		resp, err := s.cli.Get(ctx, key)
		if err != nil {
			return fmt.Errorf("read %s: %w", key, err)
		}
		var old []byte
		var modRev int64
		if len(resp.Kvs) > 0 {
			old, modRev = resp.Kvs[0].Value, resp.Kvs[0].ModRevision
		}
		b, err := fn(old)
		if err != nil || b == nil {
			return err
		}
		tr, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).
			Then(clientv3.OpPut(key, string(b), opts...)).Commit()
		if err != nil {
			return fmt.Errorf("write %s: %w", key, err)
		}
		if tr.Succeeded {
			return nil
		}
	}
}

// UpdateJSON is Update for a JSON-encoded value of type T.
func UpdateJSON[T any](ctx context.Context, s *Store, key string, fn func(v *T) error, opts ...clientv3.OpOption) error {
	return s.Update(ctx, key, func(old []byte) ([]byte, error) {
		var v T
		if old != nil {
			if err := json.Unmarshal(old, &v); err != nil {
				return nil, fmt.Errorf("decode %s: %w", key, err)
			}
		}
		if err := fn(&v); err != nil {
			return nil, err
		}
		return json.Marshal(v)
	}, opts...)
}

// GetJSON reads a JSON value; ErrNotFound when the key is absent.
func GetJSON[T any](ctx context.Context, s *Store, key string) (T, error) {
	var v T
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return v, fmt.Errorf("read %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return v, fmt.Errorf("%s: %w", key, ErrNotFound)
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &v); err != nil {
		return v, fmt.Errorf("decode %s: %w", key, err)
	}
	return v, nil
}

// ListJSON reads every JSON value below a key prefix.
func ListJSON[T any](ctx context.Context, s *Store, prefix string) ([]T, error) {
	var out []T
	_, err := s.rangeAll(ctx, prefix, 0, func(k, v []byte) error {
		var x T
		if err := json.Unmarshal(v, &x); err != nil {
			return fmt.Errorf("decode %s: %w", k, err)
		}
		out = append(out, x)
		return nil
	})
	return out, err
}

// MachineStatuses reads every machine's status, by machine name.
func (s *Store) MachineStatuses(ctx context.Context) (map[string]MachineStatus, error) {
	out := map[string]MachineStatus{}
	_, err := s.rangeAll(ctx, s.keys.MachineStatus(""), 0, func(k, v []byte) error {
		var st MachineStatus
		if err := json.Unmarshal(v, &st); err != nil {
			return fmt.Errorf("decode %s: %w", k, err)
		}
		name, _ := s.keys.SplitMachineStatus(string(k))
		out[name] = st
		return nil
	})
	return out, err
}

// maxPageBytes bounds what one read of GetKeys brings back, roughly:
// a batch that came back larger halves the next one.
const maxPageBytes = 4 << 20

// GetKeys reads the named keys at revision rev (0: now), a batch of keys
// per transaction, and calls fn for each that exists. Unlike a prefix
// range it never reads a key it was not asked for, so keys others wrote
// under the same prefix (a flood of discovered machines' reports) cost
// nothing; and a batch whose values came back larger than maxPageBytes
// makes the next batches smaller. It returns the revision read.
func (s *Store) GetKeys(ctx context.Context, keys []string, rev int64, fn func(key string, value []byte, modRev int64) error) (int64, error) {
	batch := 64
	for len(keys) > 0 {
		n := min(batch, len(keys))
		ops := make([]clientv3.Op, n)
		for i, k := range keys[:n] {
			ops[i] = clientv3.OpGet(k, clientv3.WithRev(rev))
		}
		resp, err := s.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return 0, fmt.Errorf("read %d keys from %s: %w", n, keys[0], err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		size := 0
		for _, r := range resp.Responses {
			for _, kv := range r.GetResponseRange().GetKvs() {
				size += len(kv.Value)
				if err := fn(string(kv.Key), kv.Value, kv.ModRevision); err != nil {
					return rev, err
				}
			}
		}
		if size > maxPageBytes && batch > 1 {
			batch /= 2
		}
		keys = keys[n:]
	}
	if rev == 0 {
		resp, err := s.cli.Get(ctx, s.keys.Prefix(), clientv3.WithCountOnly())
		if err != nil {
			return 0, err
		}
		rev = resp.Header.Revision
	}
	return rev, nil
}

// MachineStatusesOf reads the statuses of the named machines, by key:
// never the whole of status/, which machines off the inventory may have
// made too large for one response.
func (s *Store) MachineStatusesOf(ctx context.Context, names []string) (map[string]MachineStatus, error) {
	ks := make([]string, len(names))
	for i, n := range names {
		ks[i] = s.keys.MachineStatus(n)
	}
	out := map[string]MachineStatus{}
	_, err := s.GetKeys(ctx, ks, 0, func(k string, v []byte, _ int64) error {
		var st MachineStatus
		if err := json.Unmarshal(v, &st); err != nil {
			return fmt.Errorf("decode %s: %w", k, err)
		}
		name, _ := s.keys.SplitMachineStatus(k)
		out[name] = st
		return nil
	})
	return out, err
}
