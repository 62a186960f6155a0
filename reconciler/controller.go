package reconciler

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/spec"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
)

// errNotLeader ends a term: our election key is gone.
var errNotLeader = errors.New("no longer the region leader")

type statusEntry struct {
	st     inventory.MachineStatus
	modRev int64
	// bad: the stored status cannot be decoded. The machine is left
	// alone until someone fixes or deletes the key: deciding on an empty
	// status would start it over (and power-cycle it).
	bad error
}

// reportEntry is a machine's rack's report (reports/<rack>/<machine>).
type reportEntry struct {
	rep    inventory.MachineReport
	rack   string // the rack whose key it came from
	modRev int64
}

type taskEntry struct {
	task   inventory.PowerTask
	key    string
	modRev int64
}

// controller is one leadership term's reconciler: caches of the desired
// machines, their statuses and power tasks, kept current by etcd watches,
// and a work queue of machine names.
type controller struct {
	r     *Region
	store *inventory.Store
	fence inventory.Fence // every write compares it
	q     *queue

	mu       sync.Mutex
	desired  map[string]*spec.Machine
	specJSON map[string][]byte
	revision string // source revision of the desired state
	observed int64  // etcd revision it was read at
	status   map[string]statusEntry
	reports  map[string]reportEntry // by machine; only machines in the inventory
	power    map[string]powerEntry  // by machine, as reports
	tasks    map[string]taskEntry   // by machine
	images   map[string]*spec.Image
	racks    map[string]*spec.Rack
	profiles map[string]*spec.Profile
	// imageOnRack is each rack's report of each image: image → rack → status.
	imageOnRack map[string]map[string]inventory.ImageStatus
	events      map[string]int // events written per machine this term
	lease       clientv3.LeaseID
	writes      chan write // to the committers
}

func newController(r *Region, f inventory.Fence) *controller {
	return &controller{r: r, store: r.store, fence: f, q: newQueue(50*time.Millisecond, 30*time.Second),
		desired: map[string]*spec.Machine{}, specJSON: map[string][]byte{}, status: map[string]statusEntry{}, reports: map[string]reportEntry{}, power: map[string]powerEntry{},
		tasks: map[string]taskEntry{}, events: map[string]int{}, writes: make(chan write),
		images: map[string]*spec.Image{}, racks: map[string]*spec.Rack{}, profiles: map[string]*spec.Profile{}, imageOnRack: map[string]map[string]inventory.ImageStatus{}}
}

func (c *controller) run(ctx context.Context) error {
	defer c.q.Close()
	// loadDesired reads the statuses and reports of the machines in the
	// inventory, and only those, at the desired state's revision: never
	// all of status/ or reports/, which machines off the inventory (a
	// flood of discovered ones) could make too large to read.
	desiredRev, err := c.loadDesired(ctx)
	if err != nil {
		return err
	}
	statusRev := desiredRev
	taskRev, err := c.store.RangeRevs(ctx, c.store.Keys().Task("", ""), 0, func(k string, v []byte, mod int64) error {
		c.putTask(k, v, mod)
		return nil
	})
	if err != nil {
		return fmt.Errorf("read power tasks: %w", err)
	}
	imageRev, err := c.store.RangeRevs(ctx, c.store.Keys().ImageStatus("", ""), 0, func(k string, v []byte, _ int64) error {
		c.putImageStatus(k, v)
		return nil
	})
	if err != nil {
		return fmt.Errorf("read image statuses: %w", err)
	}
	if err := c.grantLease(ctx); err != nil {
		return err
	}
	c.r.log.Info("reconciling", "machines", len(c.desired), "statuses", len(c.status), "tasks", len(c.tasks))
	c.enqueueAll()

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return c.watchDesired(ctx, desiredRev) })
	g.Go(func() error { return c.watchStatus(ctx, statusRev) })
	g.Go(func() error { return c.watchReports(ctx, statusRev) })
	g.Go(func() error { return c.watchPower(ctx, statusRev) })
	g.Go(func() error { return c.watchTasks(ctx, taskRev) })
	g.Go(func() error { return c.watchImages(ctx, imageRev) })
	g.Go(func() error { return c.housekeeping(ctx) })
	for range c.r.cfg.Workers {
		g.Go(func() error { return c.work(ctx) })
	}
	for range committers {
		g.Go(func() error { return c.committer(ctx) })
	}
	return g.Wait()
}

// loadMachines reads the statuses and reports of machines at revision
// rev (0: now), by key.
func (c *controller) loadMachines(ctx context.Context, ms []*spec.Machine, rev int64) error {
	if len(ms) == 0 {
		return nil
	}
	ks := make([]string, 0, 3*len(ms))
	for _, m := range ms {
		ks = append(ks, c.store.Keys().MachineStatus(m.Metadata.Name), c.store.Keys().Report(m.Spec.Rack, m.Metadata.Name),
			c.store.Keys().PowerState(m.Spec.Rack, m.Metadata.Name))
	}
	_, err := c.store.GetKeys(ctx, ks, rev, func(k string, v []byte, mod int64) error {
		if name, ok := c.store.Keys().SplitMachineStatus(k); ok {
			c.putStatus(name, v, mod)
		} else if _, _, ok := c.store.Keys().SplitPowerState(k); ok {
			c.putPower(k, v, mod)
		} else {
			c.putReport(k, v, mod)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read machine statuses, reports and power states: %w", err)
	}
	return nil
}

// loadDesired reads the applied desired state's machines and queues the
// ones whose spec changed.
func (c *controller) loadDesired(ctx context.Context) (int64, error) {
	snap, err := c.store.Snapshot(ctx, spec.KindMachine, spec.KindImage, spec.KindRack, spec.KindProfile)
	if errors.Is(err, inventory.ErrNotFound) {
		resp, gerr := c.store.Client().Get(ctx, c.store.Keys().Desired(), clientv3.WithPrefix(), clientv3.WithCountOnly())
		if gerr != nil {
			return 0, fmt.Errorf("read desired state: %w", gerr)
		}
		return resp.Header.Revision, nil // nothing applied yet
	}
	if err != nil {
		return 0, fmt.Errorf("read desired state: %w", err)
	}
	next := make(map[string][]byte, len(snap.Inventory.Machines))
	var changed []string
	c.mu.Lock()
	for name, m := range snap.Inventory.Machines {
		b, _ := json.Marshal(m.Spec)
		next[name] = b
		if !bytes.Equal(c.specJSON[name], b) {
			changed = append(changed, name)
		}
	}
	for name := range c.desired {
		if _, ok := next[name]; !ok {
			changed = append(changed, name)
		}
	}
	// A machine whose image changed is looked at again too (the queue
	// drops a name queued twice).
	images := changedByName(c.images, snap.Inventory.Images)
	racks, profiles := changedByName(c.racks, snap.Inventory.Racks), changedByName(c.profiles, snap.Inventory.Profiles)
	if len(images)+len(racks)+len(profiles) > 0 {
		for name, m := range snap.Inventory.Machines {
			if images[m.Spec.Image] || racks[m.Spec.Rack] || profiles[m.Spec.Profile] {
				changed = append(changed, name)
			}
		}
	}
	first := c.revision == "" && c.observed == 0
	var added []*spec.Machine
	for name, m := range snap.Inventory.Machines {
		if old := c.desired[name]; old == nil || old.Spec.Rack != m.Spec.Rack {
			added = append(added, m)
		}
	}
	for name := range c.desired {
		if snap.Inventory.Machines[name] == nil { // gone: forget what we held
			delete(c.status, name)
			delete(c.reports, name)
			delete(c.power, name)
		}
	}
	c.desired, c.specJSON, c.images = snap.Inventory.Machines, next, snap.Inventory.Images
	c.racks, c.profiles = snap.Inventory.Racks, snap.Inventory.Profiles
	c.revision, c.observed = snap.Pointer.Revision, snap.Revision
	c.mu.Unlock()
	// The watches drop keys of machines not in the inventory: read those
	// of the machines that just came in (all of them at the start of the
	// term, at the revision the watches start from).
	rev := int64(0)
	if first {
		rev = snap.Revision
	}
	if err := c.loadMachines(ctx, added, rev); err != nil {
		return 0, err
	}
	for _, n := range changed {
		c.q.Add(n)
	}
	return snap.Revision, nil
}

func (c *controller) watchDesired(ctx context.Context, rev int64) error {
	wc := c.store.WatchPrefix(ctx, c.store.Keys().Desired(), rev)
	return inventory.EachResponse(ctx, wc, "desired state", func(events []*clientv3.Event) error {
		if !c.desiredChanged(events) {
			return nil
		}
		// Batch a burst of writes into one reload.
		drain(wc, 20*time.Millisecond)
		if _, err := c.loadDesired(ctx); err != nil && ctx.Err() == nil {
			return err
		}
		return nil
	})
}

// desiredChanged: the events move the pointer, or edit a machine or an
// image of the current generation in place.
func (c *controller) desiredChanged(events []*clientv3.Event) bool {
	for _, ev := range events {
		k := string(ev.Kv.Key)
		if k == c.store.Keys().DesiredPointer() {
			return true
		}
		if _, seg, _, ok := c.store.Keys().SplitDesired(k); ok && (seg == spec.Plural(spec.KindMachine) || seg == spec.Plural(spec.KindImage)) {
			return true
		}
	}
	return false
}

// drain swallows what else arrives on wc within d.
func drain(wc clientv3.WatchChan, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case _, ok := <-wc:
			if !ok {
				return
			}
		case <-t.C:
			return
		}
	}
}

func (c *controller) watchStatus(ctx context.Context, rev int64) error {
	return inventory.EachEvent(ctx, c.store.WatchPrefix(ctx, c.store.Keys().MachineStatus(""), rev), "machine statuses", func(ev *clientv3.Event) {
		name, _ := c.store.Keys().SplitMachineStatus(string(ev.Kv.Key))
		if !c.inInventory(name) {
			return // never decoded nor cached
		}
		if ev.Type == clientv3.EventTypeDelete {
			c.mu.Lock()
			delete(c.status, name)
			c.mu.Unlock()
		} else if !c.putStatus(name, ev.Kv.Value, ev.Kv.ModRevision) {
			return // our own write, already cached
		}
		c.q.Add(name)
	})
}

// inInventory reports whether a machine is in the desired state.
func (c *controller) inInventory(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.desired[name] != nil
}

// watchReports follows the racks' reports of their machines' boots.
func (c *controller) watchReports(ctx context.Context, rev int64) error {
	return c.watchRackKeyed(ctx, c.store.Keys().Report("", ""), rev, "machine reports", c.store.Keys().SplitReport, c.putReport,
		func(rack, name string, mod int64) {
			if cur, ok := c.reports[name]; ok && cur.rack == rack && cur.modRev < mod {
				delete(c.reports, name)
			}
		})
}

// watchRackKeyed follows one family of per-rack machine records
// (reports/, powerstate/). A record is kept (put) only when it is of a
// machine in the inventory, under that machine's rack's prefix; every
// other key (another rack writing about a machine not its own,
// discovered machines) is dropped without being decoded. drop runs
// under c.mu.
func (c *controller) watchRackKeyed(ctx context.Context, prefix string, rev int64, what string, split func(string) (string, string, bool),
	put func(key string, v []byte, mod int64) bool, drop func(rack, name string, mod int64)) error {
	return inventory.EachEvent(ctx, c.store.WatchPrefix(ctx, prefix, rev), what, func(ev *clientv3.Event) {
		rack, name, ok := split(string(ev.Kv.Key))
		if !ok || !c.reportWanted(rack, name) {
			return
		}
		if ev.Type == clientv3.EventTypeDelete {
			c.mu.Lock()
			drop(rack, name, ev.Kv.ModRevision)
			c.mu.Unlock()
		} else if !put(string(ev.Kv.Key), ev.Kv.Value, ev.Kv.ModRevision) {
			return
		}
		c.q.Add(name)
	})
}

// reportWanted: the key names a machine in the inventory, under its own
// rack's prefix.
func (c *controller) reportWanted(rack, name string) bool {
	if spec.IsDiscovered(name) {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.desired[name]
	return m != nil && m.Spec.Rack == rack
}

// putReport caches a report newer than the cached one, if wanted; it
// reports whether it did.
func (c *controller) putReport(key string, v []byte, mod int64) bool {
	rack, name, ok := c.store.Keys().SplitReport(key)
	if !ok || !c.reportWanted(rack, name) {
		return false
	}
	var rep inventory.MachineReport
	if err := json.Unmarshal(v, &rep); err != nil {
		c.r.log.Warn("ignoring an undecodable machine report", "machine", name, "rack", rack, "key", key, "err", err)
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.reports[name]; ok && old.rack == rack && old.modRev >= mod {
		return false
	}
	c.reports[name] = reportEntry{rep: rep, rack: rack, modRev: mod}
	return true
}

// putStatus caches a status newer than the cached one; it reports
// whether it was newer.
func (c *controller) putStatus(name string, v []byte, mod int64) bool {
	c.mu.Lock()
	old, ok := c.status[name]
	c.mu.Unlock()
	if ok && old.modRev >= mod {
		return false // our own write, or older than what we hold
	}
	var st inventory.MachineStatus
	err := json.Unmarshal(v, &st)
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.status[name]; ok && old.modRev >= mod {
		return false
	}
	c.status[name] = statusEntry{st: st, modRev: mod, bad: err}
	return true
}

func (c *controller) watchTasks(ctx context.Context, rev int64) error {
	return inventory.EachEvent(ctx, c.store.WatchPrefix(ctx, c.store.Keys().Task("", ""), rev), "power tasks", func(ev *clientv3.Event) {
		key := string(ev.Kv.Key)
		_, machine, ok := c.store.Keys().SplitTask(key)
		if !ok {
			return
		}
		if ev.Type == clientv3.EventTypeDelete {
			c.mu.Lock()
			if te, ok := c.tasks[machine]; ok && te.key == key && te.modRev < ev.Kv.ModRevision {
				delete(c.tasks, machine)
			}
			c.mu.Unlock()
		} else if !c.putTask(key, ev.Kv.Value, ev.Kv.ModRevision) {
			return
		}
		c.q.Add(machine)
	})
}

func (c *controller) putTask(key string, v []byte, mod int64) bool {
	_, machine, ok := c.store.Keys().SplitTask(key)
	if !ok {
		return false
	}
	c.mu.Lock()
	old, ok := c.tasks[machine]
	c.mu.Unlock()
	if ok && old.modRev >= mod {
		return false
	}
	var t inventory.PowerTask
	if err := json.Unmarshal(v, &t); err != nil {
		c.r.log.Warn("ignoring an undecodable power task", "key", key, "err", err)
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.tasks[machine]; ok && old.modRev >= mod {
		return false
	}
	c.tasks[machine] = taskEntry{task: t, key: key, modRev: mod}
	return true
}

// changedByName names the objects that differ between two versions of
// one kind (added, removed or changed); the machines using them are
// looked at again.
func changedByName[T comparable](was, now map[string]T) map[string]bool {
	out := map[string]bool{}
	for name, o := range now {
		if !sameSpec(was[name], o) {
			out[name] = true
		}
	}
	for name := range was {
		if _, ok := now[name]; !ok {
			out[name] = true
		}
	}
	return out
}

// sameSpec compares two objects by their JSON form.
func sameSpec(a, b any) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

// watchImages follows the racks' reports of their image caches and looks
// again at the machines that deploy a reported image.
func (c *controller) watchImages(ctx context.Context, rev int64) error {
	return inventory.EachEvent(ctx, c.store.WatchPrefix(ctx, c.store.Keys().ImageStatus("", ""), rev), "image statuses", func(ev *clientv3.Event) {
		var image string
		if ev.Type == clientv3.EventTypeDelete {
			rack, img, ok := c.store.Keys().SplitImageStatus(string(ev.Kv.Key))
			if !ok {
				return
			}
			c.mu.Lock()
			delete(c.imageOnRack[img], rack)
			c.mu.Unlock()
			image = img
		} else if image = c.putImageStatus(string(ev.Kv.Key), ev.Kv.Value); image == "" {
			return
		}
		c.mu.Lock()
		var names []string
		for n, m := range c.desired {
			if m.Spec.Image == image {
				names = append(names, n)
			}
		}
		c.mu.Unlock()
		for _, n := range names {
			c.q.Add(n)
		}
	})
}

// putImageStatus caches one rack's report of an image and returns the
// image's name ("" when the record cannot be read).
func (c *controller) putImageStatus(key string, v []byte) string {
	rack, image, ok := c.store.Keys().SplitImageStatus(key)
	if !ok {
		return ""
	}
	var st inventory.ImageStatus
	if err := json.Unmarshal(v, &st); err != nil {
		c.r.log.Warn("ignoring an undecodable image status", "key", key, "err", err)
		return ""
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.imageOnRack[image] == nil {
		c.imageOnRack[image] = map[string]inventory.ImageStatus{}
	}
	c.imageOnRack[image][rack] = st
	return image
}

func (c *controller) enqueueAll() {
	c.mu.Lock()
	names := make([]string, 0, len(c.desired))
	for n := range c.desired {
		names = append(names, n)
	}
	c.mu.Unlock()
	for _, n := range names {
		c.q.Add(n)
	}
}

// housekeeping resyncs, renews the events' lease and publishes the queue
// depth.
func (c *controller) housekeeping(ctx context.Context) error {
	resync := time.NewTicker(c.r.cfg.Resync)
	defer resync.Stop()
	lease := time.NewTicker(c.r.cfg.EventTTL / 2)
	defer lease.Stop()
	depth := time.NewTicker(time.Second)
	defer depth.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-resync.C:
			c.enqueueAll()
		case <-lease.C:
			if err := c.grantLease(ctx); err != nil && ctx.Err() == nil {
				c.r.log.Warn("cannot renew the events lease; events keep the old one", "err", err)
			}
		case <-depth.C:
			c.r.metrics.depth.Set(float64(c.q.Len()))
		}
	}
}

// grantLease starts a new lease for the events written from now on: they
// expire with it, after EventTTL at most.
func (c *controller) grantLease(ctx context.Context) error {
	resp, err := c.store.Client().Grant(ctx, int64(c.r.cfg.EventTTL/time.Second))
	if err != nil {
		return fmt.Errorf("grant the events lease: %w", err)
	}
	c.mu.Lock()
	c.lease = resp.ID
	c.mu.Unlock()
	return nil
}

func (c *controller) work(ctx context.Context) error {
	for {
		name, ok := c.q.Get(ctx)
		if !ok {
			return nil
		}
		err := c.reconcile(ctx, name)
		c.q.Done(name)
		if errors.Is(err, errNotLeader) {
			return err
		}
	}
}

// reconcile decides one machine's next step and writes it, fenced by our
// leadership and compared against the status and task it was decided on.
func (c *controller) reconcile(ctx context.Context, name string) error {
	start := time.Now()
	m := c.r.metrics
	snap := c.snapshot(name)
	if snap.in.Machine == nil {
		return nil // not in the inventory: nothing to do, nothing touched
	}
	if snap.status.bad != nil {
		m.reconciles.WithLabelValues("error").Inc()
		c.r.log.Error("machine status cannot be decoded; leaving the machine alone until the key is fixed or deleted",
			"machine", name, "key", c.store.Keys().MachineStatus(name), "err", snap.status.bad)
		return nil
	}
	dec := Decide(snap.in, c.r.cfg.Policy)
	txn, err := c.txn(name, snap, &dec)
	if err != nil {
		return err
	}
	if len(txn.ops) == 0 {
		c.settle(name, dec, start, "unchanged")
		return nil
	}
	res := c.commit(ctx, txn.cmps, txn.ops)
	switch {
	case res.notLeader:
		m.reconciles.WithLabelValues("error").Inc()
		return errNotLeader
	case res.err != nil:
		m.reconciles.WithLabelValues("error").Inc()
		if ctx.Err() == nil {
			c.r.log.Warn("write machine status", "machine", name, "err", res.err)
			c.q.AddRateLimited(name)
		}
		return nil
	case res.conflict:
		// Someone (an agent report, the rack) wrote first: refresh and
		// decide again on what they wrote.
		m.reconciles.WithLabelValues("conflict").Inc()
		c.refresh(ctx, name)
		c.q.AddRateLimited(name)
		return nil
	}
	compact := c.written(name, dec, txn, res.rev)
	c.observe(name, snap.status.st, dec, snap.in.Now)
	c.kickRollout(name, snap.status.st, dec.Status)
	if compact {
		c.compactEvents(ctx, name)
	}
	c.settle(name, dec, start, "success")
	return nil
}

// snapshot is what one reconcile decides on: the cached state of one
// machine, taken under the lock.
type snapshot struct {
	in        Input // Machine is nil when the machine is not in the inventory
	status    statusEntry
	hasStatus bool
	task      taskEntry
	hasTask   bool
	lease     clientv3.LeaseID // events are written with it
}

func (c *controller) snapshot(name string) snapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	machine := c.desired[name]
	s := snapshot{lease: c.lease}
	s.status, s.hasStatus = c.status[name]
	s.task, s.hasTask = c.tasks[name]
	s.in = Input{Now: c.r.cfg.Now().UTC(), Machine: machine, Status: s.status.st, Revision: c.revision, Observed: c.observed}
	if machine == nil {
		return s
	}
	s.in.Rack, s.in.Profile = c.racks[machine.Spec.Rack], c.profiles[machine.Spec.Profile]
	s.in.Rollout = c.rolloutGate(machine)
	if machine.Spec.Image != "" {
		s.in.Image = c.images[machine.Spec.Image]
		if st, ok := c.imageOnRack[machine.Spec.Image][machine.Spec.Rack]; ok {
			s.in.ImageOnRack = &st
		}
	}
	if re, ok := c.reports[name]; ok && re.rack == machine.Spec.Rack {
		r := re.rep
		s.in.Report = &r
	}
	if pe, ok := c.power[name]; ok && pe.rack == machine.Spec.Rack {
		o := pe.obs
		s.in.Power = &o
	}
	if s.hasTask {
		t := s.task.task
		s.in.Task = &t
	}
	return s
}

// machineTxn is the fenced transaction that writes one decision.
type machineTxn struct {
	cmps          []clientv3.Cmp
	ops           []clientv3.Op
	statusChanged bool
	taskKey       string // where dec.Task is written, if any
}

// txn builds the transaction that writes dec: the status if it changed
// (stamping dec.Status.UpdatedAt), the new task, the old task's deletion,
// the events; each guarded by the revision it was decided on.
func (c *controller) txn(name string, snap snapshot, dec *Decision) (machineTxn, error) {
	keys := c.store.Keys()
	se, te := snap.status, snap.task
	statusKey := keys.MachineStatus(name)
	t := machineTxn{cmps: []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(statusKey), "=", se.modRev)}}
	t.statusChanged = statusChanged(se.st, dec.Status) || !snap.hasStatus
	if t.statusChanged {
		dec.Status.UpdatedAt = snap.in.Now
		b, err := json.Marshal(dec.Status)
		if err != nil {
			return t, fmt.Errorf("encode status of %s: %w", name, err)
		}
		t.ops = append(t.ops, clientv3.OpPut(statusKey, string(b)))
	}
	if dec.Task != nil {
		t.taskKey = keys.Task(dec.Status.Rack, name)
		b, err := json.Marshal(dec.Task)
		if err != nil {
			return t, fmt.Errorf("encode task of %s: %w", name, err)
		}
		t.ops = append(t.ops, clientv3.OpPut(t.taskKey, string(b)))
		t.cmps = append(t.cmps, clientv3.Compare(clientv3.ModRevision(t.taskKey), "=", modRevIf(snap.hasTask && te.key == t.taskKey, te.modRev)))
	}
	if snap.hasTask && (dec.DeleteTask || (dec.Task != nil && te.key != t.taskKey)) {
		t.ops = append(t.ops, clientv3.OpDelete(te.key))
		t.cmps = append(t.cmps, clientv3.Compare(clientv3.ModRevision(te.key), "=", te.modRev))
	}
	for i, ev := range dec.Events {
		b, _ := json.Marshal(ev)
		t.ops = append(t.ops, clientv3.OpPut(keys.Event(ev.Machine, ev.Time, i), string(b), clientv3.WithLease(snap.lease)))
	}
	return t, nil
}

// written updates the caches with what the transaction wrote at rev and
// counts the events; it reports whether the machine's events are due for
// compaction.
func (c *controller) written(name string, dec Decision, t machineTxn, rev int64) (compact bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// The watch may have brought something newer already: keep it.
	if t.statusChanged && c.status[name].modRev < rev {
		c.status[name] = statusEntry{st: dec.Status, modRev: rev}
	}
	if cur, ok := c.tasks[name]; dec.Task != nil && (!ok || cur.modRev < rev) {
		c.tasks[name] = taskEntry{task: *dec.Task, key: t.taskKey, modRev: rev}
	} else if dec.DeleteTask && ok && cur.modRev < rev {
		delete(c.tasks, name)
	}
	c.events[name] += len(dec.Events)
	compact = c.events[name] > c.r.cfg.EventsPerMachine/2
	if compact {
		c.events[name] = 0
	}
	return compact
}

// observe times the phase the machine left and logs its transitions.
func (c *controller) observe(name string, was inventory.MachineStatus, dec Decision, now time.Time) {
	if was.Phase == dec.Status.Phase {
		return
	}
	if !was.PhaseStartedAt.IsZero() && was.Phase != "" {
		c.r.metrics.phaseDuration.WithLabelValues(was.Phase).Observe(now.Sub(was.PhaseStartedAt).Seconds())
	}
	if strings.HasPrefix(dec.Status.Phase, FailedPrefix) {
		c.r.metrics.failures.WithLabelValues(dec.Status.Phase).Inc()
	}
	for _, ev := range dec.Events {
		if ev.From != ev.To {
			c.r.log.Info("machine "+ev.To, "machine", name, "from", ev.From, "reason", ev.Reason, "message", ev.Message)
		}
	}
}

// compactEvents keeps the machine's newest events; failing is harmless
// (the next compaction catches up), so it is only logged.
func (c *controller) compactEvents(ctx context.Context, name string) {
	if _, err := c.store.CompactEvents(ctx, name, c.r.cfg.EventsPerMachine); err != nil && ctx.Err() == nil {
		c.r.log.Debug("compact events", "machine", name, "err", err)
	}
}

func modRevIf(ok bool, rev int64) int64 {
	if ok {
		return rev
	}
	return 0
}

func (c *controller) settle(name string, dec Decision, start time.Time, result string) {
	c.q.Forget(name)
	if dec.RequeueAfter > 0 {
		c.q.AddAfter(name, dec.RequeueAfter)
	}
	c.r.metrics.reconciles.WithLabelValues(result).Inc()
	c.r.metrics.duration.Observe(time.Since(start).Seconds())
}

// refresh re-reads a machine's status and task after a conflict, so the
// next decision does not wait for the watch.
func (c *controller) refresh(ctx context.Context, name string) {
	c.mu.Lock()
	st := c.status[name]
	rack := st.st.Rack
	if m := c.desired[name]; m != nil {
		rack = m.Spec.Rack
	}
	c.mu.Unlock()
	cli := c.store.Client()
	if resp, err := cli.Get(ctx, c.store.Keys().MachineStatus(name)); err == nil && len(resp.Kvs) > 0 {
		c.putStatus(name, resp.Kvs[0].Value, resp.Kvs[0].ModRevision)
	}
	if resp, err := cli.Get(ctx, c.store.Keys().Task(rack, name)); err == nil && len(resp.Kvs) > 0 {
		c.putTask(string(resp.Kvs[0].Key), resp.Kvs[0].Value, resp.Kvs[0].ModRevision)
	}
}

// statusChanged compares two statuses, ignoring UpdatedAt.
func statusChanged(a, b inventory.MachineStatus) bool {
	a.UpdatedAt, b.UpdatedAt = time.Time{}, time.Time{}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return !bytes.Equal(ja, jb)
}

// snapshotCounts counts the desired machines by phase and rack, for the
// kiln_machines gauge.
func (c *controller) snapshotCounts() map[[2]string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[[2]string]int{}
	for name, m := range c.desired {
		phase := c.status[name].st.Phase
		if phase == "" {
			phase = "new"
		}
		out[[2]string{phase, m.Spec.Rack}]++
	}
	return out
}
