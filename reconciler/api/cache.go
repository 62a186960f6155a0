package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/keys"
	"github.com/kilnhq/kiln/netboot/dhcp"
	"github.com/kilnhq/kiln/spec"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// cache is what the API reads: the applied desired state, every machine's
// status, the sources' status and the API tokens, kept current by one
// watch of Kiln's prefix (so its changes come in etcd's order), and the
// recent machine changes for watchers to resume from.
type cache struct {
	store *inventory.Store
	log   *slog.Logger
	ring  int // changes kept for resuming watchers

	mu       sync.RWMutex
	loaded   chan struct{}
	rev      int64 // every change up to rev is in
	snap     *inventory.Snapshot
	statuses map[string]inventory.MachineStatus
	sources  map[string]inventory.SourceStatus
	tokens   map[string]inventory.APIToken // by ID
	// The racks' records, by etcd key: image cache states, discovered
	// MACs, DHCP leases (each bounded by the racks' own limits).
	rackRecs map[string]rackRecord
	changes  []Change // the newest ring changes, oldest first
	first    int64    // changes after first are all in changes
	subs     map[chan []Change]struct{}
}

// Change is one entry of the watch: a machine's summary after a change at
// etcd revision Revision (Deleted: the machine left the inventory and has
// no status).
type Change struct {
	Revision int64           `json:"revision"`
	Type     string          `json:"type"` // machine, source, event, image, discovered, lease
	Machine  *MachineSummary `json:"machine,omitempty"`
	Name     string          `json:"name"`
	Deleted  bool            `json:"deleted,omitempty"`
	// Event is a machine's new lifecycle event (type event).
	Event *inventory.Event `json:"event,omitempty"`
	// data is the change as JSON, encoded once for every watcher.
	data []byte
}

// rackRecord is one decoded rack record of the cache.
type rackRecord struct {
	image      string // imagestatus: the image
	imageState *inventory.ImageStatus
	discovered *inventory.Discovered
	lease      *dhcp.Lease
}

// kind is the watch's change type of the record.
func (r rackRecord) kind() string {
	switch {
	case r.imageState != nil:
		return "image"
	case r.discovered != nil:
		return "discovered"
	}
	return "lease"
}

// decodeRackRecord decodes a rack record the cache keeps; ok is false for
// any other key.
func decodeRackRecord(k keys.Layout, key string, v []byte) (rackRecord, bool) {
	var r rackRecord
	switch {
	case strings.HasPrefix(key, k.ImageStatus("", "")):
		_, image, ok := k.SplitImageStatus(key)
		var st inventory.ImageStatus
		if !ok || json.Unmarshal(v, &st) != nil {
			return r, false
		}
		r.image, r.imageState = image, &st
	case strings.HasPrefix(key, k.Discovered("", "")):
		var d inventory.Discovered
		if json.Unmarshal(v, &d) != nil {
			return r, false
		}
		r.discovered = &d
	case strings.HasPrefix(key, k.Lease("", "", "")):
		var l dhcp.Lease
		if json.Unmarshal(v, &l) != nil {
			return r, false
		}
		r.lease = &l
	default:
		return r, false
	}
	return r, true
}

// isRackRecord says whether the cache keeps the records under key.
func isRackRecord(k keys.Layout, key string) bool {
	return strings.HasPrefix(key, k.ImageStatus("", "")) || strings.HasPrefix(key, k.Discovered("", "")) || strings.HasPrefix(key, k.Lease("", "", ""))
}

func newCache(store *inventory.Store, ring int, log *slog.Logger) *cache {
	return &cache{store: store, log: log, ring: ring, loaded: make(chan struct{}), subs: map[chan []Change]struct{}{}}
}

// run loads the cache and follows the watch until ctx ends; a lost watch
// (etcd away, compaction) loads again, and watchers are told to resume.
func (c *cache) run(ctx context.Context) error {
	for ctx.Err() == nil {
		rev, err := c.load(ctx)
		if err != nil {
			c.log.Warn("api cache: load", "err", err)
		} else {
			err = c.follow(ctx, rev)
			if ctx.Err() == nil {
				c.log.Warn("api cache: watch ended; loading again", "err", err)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	return nil
}

// load reads everything at one revision.
func (c *cache) load(ctx context.Context) (int64, error) {
	snap, err := c.store.Snapshot(ctx)
	if errors.Is(err, inventory.ErrNotFound) {
		_, rev, err2 := c.store.Current(ctx)
		if err2 != nil && !errors.Is(err2, inventory.ErrNotFound) {
			return 0, err2
		}
		snap, err = &inventory.Snapshot{Revision: rev, Inventory: spec.NewInventory(), Unmanaged: map[string]inventory.Unmanaged{}}, nil
	}
	if err != nil {
		return 0, fmt.Errorf("desired state: %w", err)
	}
	rev := snap.Revision
	statuses := map[string]inventory.MachineStatus{}
	sources := map[string]inventory.SourceStatus{}
	tokens := map[string]inventory.APIToken{}
	recs := map[string]rackRecord{}
	k := c.store.Keys()
	keepRec := func(key string, v []byte) error {
		if r, ok := decodeRackRecord(k, key, v); ok {
			recs[key] = r
		}
		return nil
	}
	for _, r := range []struct {
		prefix string
		fn     func(key string, v []byte) error
	}{
		{k.MachineStatus(""), func(key string, v []byte) error {
			if name, ok := k.SplitMachineStatus(key); ok {
				var st inventory.MachineStatus
				if json.Unmarshal(v, &st) == nil {
					statuses[name] = st
				}
			}
			return nil
		}},
		{k.Source(""), func(key string, v []byte) error {
			var st inventory.SourceStatus
			if json.Unmarshal(v, &st) == nil {
				sources[st.Name] = st
			}
			return nil
		}},
		{k.APIToken(""), func(key string, v []byte) error {
			var t inventory.APIToken
			if json.Unmarshal(v, &t) == nil && t.ID != "" {
				tokens[t.ID] = t
			}
			return nil
		}},
		{k.ImageStatus("", ""), keepRec},
		{k.Discovered("", ""), keepRec},
		{k.Lease("", "", ""), keepRec},
	} {
		if _, err := c.store.RangeAt(ctx, r.prefix, rev, r.fn); err != nil {
			return 0, err
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.snap, c.statuses, c.sources, c.tokens, c.rackRecs, c.rev = snap, statuses, sources, tokens, recs, rev
	// Watchers cannot be told what happened while nobody watched: they
	// resume from a revision the changes no longer cover, and list again.
	c.changes, c.first = nil, rev
	for ch := range c.subs {
		close(ch)
		delete(c.subs, ch)
	}
	select {
	case <-c.loaded:
	default:
		close(c.loaded)
	}
	return rev, nil
}

// follow applies the watch's changes after rev until it ends.
func (c *cache) follow(ctx context.Context, rev int64) error {
	k := c.store.Keys()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wc := c.store.WatchChanges(wctx, rev)
	for {
		var resp clientv3.WatchResponse
		var ok bool
		select {
		case <-ctx.Done():
			return nil
		case resp, ok = <-wc:
		}
		if !ok {
			return errors.New("watch closed")
		}
		if err := resp.Err(); err != nil {
			return err
		}
		if len(resp.Events) == 0 {
			continue
		}
		at := resp.Header.Revision
		var desired bool
		var changes []Change
		c.mu.Lock()
		for _, ev := range resp.Events {
			key := string(ev.Kv.Key)
			switch {
			case strings.HasPrefix(key, k.Desired()):
				desired = true
			case strings.HasPrefix(key, k.MachineStatus("")):
				name, ok := k.SplitMachineStatus(key)
				if !ok {
					continue
				}
				if ev.Type == clientv3.EventTypeDelete {
					delete(c.statuses, name)
				} else {
					var st inventory.MachineStatus
					if json.Unmarshal(ev.Kv.Value, &st) != nil {
						continue
					}
					c.statuses[name] = st
				}
				changes = append(changes, c.machineChange(name, ev.Kv.ModRevision))
			case strings.HasPrefix(key, k.Source("")):
				var st inventory.SourceStatus
				if ev.Type != clientv3.EventTypeDelete && json.Unmarshal(ev.Kv.Value, &st) == nil {
					c.sources[st.Name] = st
					changes = append(changes, Change{Revision: ev.Kv.ModRevision, Type: "source", Name: st.Name})
				}
			case isRackRecord(k, key):
				old := c.rackRecs[key]
				r, ok := decodeRackRecord(k, key, ev.Kv.Value)
				if ok && ev.Type == clientv3.EventTypePut {
					c.rackRecs[key] = r
				} else {
					delete(c.rackRecs, key)
					r = old
				}
				changes = append(changes, Change{Revision: ev.Kv.ModRevision, Type: r.kind(), Name: strings.TrimPrefix(key, k.Prefix()),
					Deleted: ev.Type == clientv3.EventTypeDelete})
			case strings.HasPrefix(key, k.Events("")) && ev.Type == clientv3.EventTypePut:
				var e inventory.Event
				if json.Unmarshal(ev.Kv.Value, &e) == nil {
					changes = append(changes, Change{Revision: ev.Kv.ModRevision, Type: "event", Name: e.Machine, Event: &e})
				}
			case strings.HasPrefix(key, k.APIToken("")):
				var t inventory.APIToken
				if id, ok := k.SplitAPIToken(key); ok {
					if ev.Type == clientv3.EventTypeDelete || json.Unmarshal(ev.Kv.Value, &t) != nil {
						delete(c.tokens, id)
					} else {
						c.tokens[id] = t
					}
				}
			}
		}
		c.mu.Unlock()
		if desired {
			snap, err := c.store.SnapshotAt(ctx, at)
			if err != nil && !errors.Is(err, inventory.ErrNotFound) {
				return fmt.Errorf("desired state at %d: %w", at, err)
			}
			if err == nil {
				changes = append(changes, c.swapSnapshot(snap, at)...)
			}
		}
		c.publish(at, changes)
	}
}

// swapSnapshot installs a new desired state and returns the changes of
// the machines it added, removed or changed.
func (c *cache) swapSnapshot(snap *inventory.Snapshot, at int64) []Change {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.snap.Inventory.Machines
	c.snap = snap
	var out []Change
	for name, m := range snap.Inventory.Machines {
		if o, ok := old[name]; !ok || !sameSpec(o, m) {
			out = append(out, c.machineChange(name, at))
		}
	}
	for name := range old {
		if _, ok := snap.Inventory.Machines[name]; !ok {
			out = append(out, c.machineChange(name, at))
		}
	}
	out = append(out, Change{Revision: at, Type: "source", Name: "desired"})
	return out
}

func sameSpec(a, b *spec.Machine) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

// machineChange is the change of one machine as the cache holds it now;
// c.mu is held.
func (c *cache) machineChange(name string, rev int64) Change {
	ch := Change{Revision: rev, Type: "machine", Name: name}
	if s, ok := c.summary(name); ok {
		ch.Machine = &s
	} else {
		ch.Deleted = true
	}
	return ch
}

// publish records the changes of one watch response (revision at) and
// sends them to every watcher; a watcher too slow to take them is closed,
// to resume from its last revision.
func (c *cache) publish(at int64, changes []Change) {
	for i := range changes {
		changes[i].data, _ = json.Marshal(changes[i])
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rev = at
	c.changes = append(c.changes, changes...)
	if over := len(c.changes) - c.ring; over > 0 {
		c.first = c.changes[over-1].Revision
		c.changes = slices.Delete(c.changes, 0, over)
	}
	if len(changes) == 0 {
		return
	}
	for ch := range c.subs {
		select {
		case ch <- changes:
		default:
			close(ch)
			delete(c.subs, ch)
		}
	}
}

// errGone: a watcher asked to resume from a revision the kept changes no
// longer cover; it lists again.
var errGone = errors.New("the changes since that revision are no longer kept: list again and watch from the list's revision")

// subscribe returns the changes after since (0: none, from now on) and a
// channel of the later ones, a watch response's at a time, closed when
// the watcher falls behind by buffer responses or the cache reloads;
// cancel ends it.
func (c *cache) subscribe(since int64, buffer int) (past []Change, rev int64, ch chan []Change, cancel func(), err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if since > 0 {
		if since < c.first {
			return nil, 0, nil, nil, errGone
		}
		i, _ := slices.BinarySearchFunc(c.changes, since+1, func(x Change, r int64) int { return int(x.Revision - r) })
		past = slices.Clone(c.changes[i:])
	}
	ch = make(chan []Change, buffer)
	c.subs[ch] = struct{}{}
	return past, c.rev, ch, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if _, ok := c.subs[ch]; ok {
			delete(c.subs, ch)
			close(ch)
		}
	}, nil
}

// token returns the record of a token ID.
func (c *cache) token(id string) (inventory.APIToken, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	t, ok := c.tokens[id]
	return t, ok
}

// rackRecords returns, in key order (rack, then name), the cached records
// for which pick returns true.
func (c *cache) rackRecords(pick func(key string, r rackRecord) bool) []rackRecord {
	c.mu.RLock()
	defer c.mu.RUnlock()
	keys := make([]string, 0, len(c.rackRecs))
	for k, r := range c.rackRecs {
		if pick(k, r) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	out := make([]rackRecord, len(keys))
	for i, k := range keys {
		out[i] = c.rackRecs[k]
	}
	return out
}

// imageStates are the racks' image cache states by image, in rack order.
func (c *cache) imageStates() map[string][]inventory.ImageStatus {
	out := map[string][]inventory.ImageStatus{}
	for _, r := range c.rackRecords(func(_ string, r rackRecord) bool { return r.imageState != nil }) {
		out[r.image] = append(out[r.image], *r.imageState)
	}
	return out
}

// revision is the etcd revision the cache holds every change up to.
func (c *cache) revision() int64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.rev
}
