package rack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/etcdtest"
	"github.com/kilnhq/kiln/inventory/etcdtest/invtest"
	"github.com/kilnhq/kiln/power"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// fakePower records calls and keeps a power state per machine.
type fakePower struct {
	mu    sync.Mutex
	calls []string
	on    map[string]bool
	fail  map[string]error
	// tokenAtOn, when set, reads the machine's boot-token record as the
	// machine is powered on (it must already be there).
	tokenAtOn func(machine string) (inventory.BootToken, error)
	atOn      map[string]inventory.BootToken
}

func (f *fakePower) record(t power.Target, op string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, t.Machine+":"+op)
	return f.fail[t.Machine]
}

func (f *fakePower) PowerOn(_ context.Context, t power.Target) error {
	if t.Driver == "manual" {
		return fmt.Errorf("power machine %s on by hand: %w", t.Machine, power.ErrManual)
	}
	if f.tokenAtOn != nil {
		if tok, err := f.tokenAtOn(t.Machine); err == nil {
			f.mu.Lock()
			f.atOn[t.Machine] = tok
			f.mu.Unlock()
		}
	}
	err := f.record(t, "on")
	if err == nil {
		f.mu.Lock()
		f.on[t.Machine] = true
		f.mu.Unlock()
	}
	return err
}

func (f *fakePower) PowerOff(_ context.Context, t power.Target, hard bool) error {
	err := f.record(t, "off")
	if err == nil {
		f.mu.Lock()
		f.on[t.Machine] = false
		f.mu.Unlock()
	}
	return err
}

func (f *fakePower) PowerCycle(_ context.Context, t power.Target) error { return f.record(t, "cycle") }

func (f *fakePower) Status(_ context.Context, t power.Target) (power.State, error) {
	if t.Driver == "manual" {
		return power.Unknown, nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail[t.Machine]; err != nil {
		return power.Unknown, err
	}
	if f.on[t.Machine] {
		return power.On, nil
	}
	return power.Off, nil
}

func (f *fakePower) SetBoot(_ context.Context, t power.Target, b power.Boot) error {
	if t.Driver == "manual" {
		return fmt.Errorf("set the boot device of %s by hand: %w", t.Machine, power.ErrManual)
	}
	mode := "legacy"
	if b.UEFI {
		mode = "uefi"
	}
	return f.record(t, "boot-"+string(b.Device)+"/"+mode)
}

func (f *fakePower) ops(machine string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.calls {
		if m, op, _ := strings.Cut(c, ":"); m == machine {
			out = append(out, op)
		}
	}
	return strings.Join(out, ",")
}

const tasksInventory = `
apiVersion: kiln.dev/v1alpha1
kind: Rack
metadata: {name: r1}
spec: {allowPlaintextPasswords: true}
---
apiVersion: kiln.dev/v1alpha1
kind: Subnet
metadata: {name: net1}
spec: {cidr: 192.0.2.0/24, rack: r1}
`

func machineDoc(i int, name, driver string) string {
	firmware := "" // the default, uefi
	if strings.HasPrefix(name, "bios") {
		firmware = "\n  firmware: bios"
	}
	return fmt.Sprintf(`---
apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: %s}
spec:
  interfaces: [{name: eno1, mac: "02:00:00:00:00:%02x", subnet: net1}]
  bmc: {driver: %s, address: "192.0.2.250:623", username: admin, password: secret}%s
`, name, i, driver, firmware)
}

func getTask(t *testing.T, cli *clientv3.Client, key string) inventory.PowerTask {
	t.Helper()
	resp, err := cli.Get(context.Background(), key)
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("task %s: %v", key, err)
	}
	var pt inventory.PowerTask
	if err := json.Unmarshal(resp.Kvs[0].Value, &pt); err != nil {
		t.Fatal(err)
	}
	return pt
}

// taskRunner returns a power-task runner for agent a holding a fence: a
// key standing for its election key, on the returned lease.
func taskRunner(t *testing.T, cli *clientv3.Client, store *inventory.Store, a *Agent, p Powerer, catchUp time.Duration) (*tasks, clientv3.LeaseID) {
	t.Helper()
	lease, err := cli.Grant(context.Background(), 60)
	if err != nil {
		t.Fatal(err)
	}
	put, err := cli.Put(context.Background(), store.Keys().RackElection("r1")+"agent-1", "agent-1", clientv3.WithLease(lease.ID))
	if err != nil {
		t.Fatal(err)
	}
	return &tasks{a: a, power: p, fence: inventory.Fence{Key: store.Keys().RackElection("r1") + "agent-1", Rev: put.Header.Revision},
		now: time.Now, catchUp: catchUp, inflight: map[string]string{}, next: map[string]taskWrite{}}, lease.ID
}

func TestPowerTasks(t *testing.T) {
	cli, _ := etcdtest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store := inventory.NewStore(cli, "", quiet())
	doc := tasksInventory
	for i, m := range []string{"off1", "on1", "gone", "hand", "bad", "resumed", "bios1", "bios2"} {
		drv := "ipmi"
		if m == "hand" {
			drv = "manual"
		}
		doc += machineDoc(i, m, drv)
	}
	inv := invtest.Load(t, doc)
	// "late" is in the source, but not yet in this agent's copy when its
	// task arrives (the region is quicker than the rack's watch).
	withLate := invtest.Load(t, doc+machineDoc(9, "late", "ipmi"))
	a := &Agent{cfg: Config{Rack: "r1", ID: "agent-1"}, store: store, log: quiet(), inv: inv,
		ready: make(chan struct{}), changed: make(chan struct{})}
	fp := &fakePower{on: map[string]bool{"on1": true, "resumed": true}, fail: map[string]error{"bad": fmt.Errorf("dial: %w", power.ErrTimeout)}}
	fp.atOn = map[string]inventory.BootToken{}
	fp.tokenAtOn = func(m string) (inventory.BootToken, error) { return store.Tokens("r1").Get(ctx, m) }
	tr, lease := taskRunner(t, cli, store, a, fp, 5*time.Second)

	write := func(machine, action, state string) {
		b, _ := json.Marshal(inventory.PowerTask{ID: machine + "-1", Machine: machine, Action: action, State: state, CreatedAt: time.Now()})
		if _, err := cli.Put(context.Background(), store.Keys().Task("r1", machine), string(b)); err != nil {
			t.Fatal(err)
		}
	}
	// A task a dead leader had started (running) and had done: the
	// machine is on, so it is not cycled again.
	write("resumed", inventory.TaskNetboot, inventory.TaskRunning)
	done := make(chan error, 1)
	go func() { done <- tr.run(ctx) }()
	write("off1", inventory.TaskNetboot, inventory.TaskPending)
	write("on1", inventory.TaskDiskboot, inventory.TaskPending)
	write("gone", inventory.TaskOff, inventory.TaskPending)
	write("hand", inventory.TaskNetboot, inventory.TaskPending)
	write("bad", inventory.TaskNetboot, inventory.TaskPending)
	write("nosuch", inventory.TaskOff, inventory.TaskPending)
	write("bios1", inventory.TaskNetboot, inventory.TaskPending)
	write("bios2", inventory.TaskDiskboot, inventory.TaskPending)
	write("late", inventory.TaskNetboot, inventory.TaskPending)
	// Once the others are done, "late" still waits for the inventory
	// rather than failing; when the copy catches up, it is carried out.
	waitTask(t, cli, store.Keys().Task("r1", "off1"))
	if pt := getTask(t, cli, store.Keys().Task("r1", "late")); pt.State != inventory.TaskPending {
		t.Fatalf("late: %+v, want it pending until the inventory has the machine", pt)
	}
	a.setView(a.view, withLate, 0)

	want := map[string]struct{ state, ops, errHas string }{
		// The boot override carries the firmware mode: UEFI unless the
		// machine says bios.
		"off1":    {inventory.TaskDone, "boot-network/uefi,on", ""},
		"on1":     {inventory.TaskDone, "boot-disk/uefi,cycle", ""},
		"bios1":   {inventory.TaskDone, "boot-network/legacy,on", ""},
		"bios2":   {inventory.TaskDone, "boot-disk/legacy,on", ""},
		"gone":    {inventory.TaskDone, "off", ""},
		"hand":    {inventory.TaskManual, "", "by hand"},
		"bad":     {inventory.TaskFailed, "", "did not answer"},
		"resumed": {inventory.TaskDone, "", ""},
		"nosuch":  {inventory.TaskFailed, "", "not in rack r1"},
		"late":    {inventory.TaskDone, "boot-network/uefi,on", ""},
	}
	for m, w := range want {
		pt := waitTask(t, cli, store.Keys().Task("r1", m))
		if pt.State != w.state || !strings.Contains(pt.Error, w.errHas) || pt.Agent != "agent-1" {
			t.Errorf("%s: %+v, want state %s with error containing %q", m, pt, w.state, w.errHas)
		}
		if got := fp.ops(m); got != w.ops {
			t.Errorf("%s: power calls %q, want %q", m, got, w.ops)
		}
	}
	// A netboot task writes its boot's pending token record before it
	// powers the machine (manual power too); a diskboot task writes none.
	fp.mu.Lock()
	atOn := fp.atOn["off1"]
	fp.mu.Unlock()
	if atOn.State != inventory.TokenPending || atOn.TaskID != "off1-1" || atOn.SHA256 != "" {
		t.Errorf("off1's token record when powered on: %+v, want pending for task off1-1", atOn)
	}
	if tok, err := store.Tokens("r1").Get(ctx, "hand"); err != nil || tok.State != inventory.TokenPending || tok.TaskID != "hand-1" {
		t.Errorf("manual machine's token record: %+v %v", tok, err)
	}
	if _, err := store.Tokens("r1").Get(ctx, "on1"); !errors.Is(err, inventory.ErrNotFound) {
		t.Errorf("a diskboot task wrote a token record: %v", err)
	}
	if pt := waitTask(t, cli, store.Keys().Task("r1", "off1")); pt.Power != "on" {
		t.Errorf("power state not recorded: %+v", pt)
	}

	cancel()
	<-done

	// Deposed: with the election key gone, a runner writes nothing and
	// touches no BMC.
	if _, err := cli.Revoke(context.Background(), lease); err != nil {
		t.Fatal(err)
	}
	write("gone", inventory.TaskOff, inventory.TaskPending)
	resp, err := cli.Get(context.Background(), store.Keys().Task("r1", "gone"))
	if err != nil {
		t.Fatal(err)
	}
	var pt inventory.PowerTask
	json.Unmarshal(resp.Kvs[0].Value, &pt)
	before := fp.ops("gone")
	tr.execute(context.Background(), taskWrite{key: store.Keys().Task("r1", "gone"), task: pt, modRev: resp.Kvs[0].ModRevision})
	if got := fp.ops("gone"); got != before {
		t.Errorf("a deposed leader drove the BMC: %q → %q", before, got)
	}
	resp, err = cli.Get(context.Background(), store.Keys().Task("r1", "gone"))
	if err != nil {
		t.Fatal(err)
	}
	json.Unmarshal(resp.Kvs[0].Value, &pt)
	if pt.State != inventory.TaskPending {
		t.Fatalf("a deposed leader wrote a task outcome: %+v", pt)
	}
}

// waitTask waits until the task at key is finished.
func waitTask(t *testing.T, cli *clientv3.Client, key string) inventory.PowerTask {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	var pt inventory.PowerTask
	if len(resp.Kvs) > 0 {
		json.Unmarshal(resp.Kvs[0].Value, &pt)
		if pt.Finished() {
			return pt
		}
	}
	for wr := range cli.Watch(ctx, key, clientv3.WithRev(resp.Header.Revision+1)) {
		for _, ev := range wr.Events {
			pt = inventory.PowerTask{}
			json.Unmarshal(ev.Kv.Value, &pt)
			if pt.Finished() {
				return pt
			}
		}
	}
	t.Fatalf("%s: not finished: %+v", key, pt)
	return pt
}

// The region writes a task after the desired state that names its machine;
// the rack's view may lag. The task waits for the view to reach the task's
// revision; a machine that view does not have fails at once, and one
// whose view never catches up fails at the bound, with the same reason.
func TestPowerTaskWaitsForTheViewToReachItsRevision(t *testing.T) {
	store, cli, _ := invtest.Start(t, tasksInventory+machineDoc(1, "m1", "ipmi"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	snap, err := store.Snapshot(ctx, "Machine", "Subnet")
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{cfg: Config{Rack: "r1", ID: "agent-1"}, store: store, log: quiet(),
		ready: make(chan struct{}), changed: make(chan struct{})}
	a.setView(viewOf("r1", snap.Inventory, a.cfg.Boot), snap.Inventory, snap.Revision)
	const bound = 20 * time.Second
	run := func(catchUp time.Duration) (stop func()) {
		tr, lease := taskRunner(t, cli, store, a, &fakePower{on: map[string]bool{}}, catchUp)
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- tr.run(rctx) }()
		return func() { cancel(); <-done; cli.Revoke(context.Background(), lease) } // the next term's fence is a new key
	}
	stopRunner := run(bound)
	write := func(machine string) {
		t.Helper()
		b, _ := json.Marshal(inventory.PowerTask{ID: machine + "-1", Machine: machine, Action: inventory.TaskOff, State: inventory.TaskPending})
		if _, err := cli.Put(ctx, store.Keys().Task("r1", machine), string(b)); err != nil {
			t.Fatal(err)
		}
	}

	// The view lags: "late" is committed, its task written, but the view
	// is not followed yet. The task waits while m1's is done.
	invtest.Apply(t, cli, invtest.Load(t, tasksInventory+machineDoc(1, "m1", "ipmi")+machineDoc(2, "late", "ipmi")))
	write("late")
	write("m1")
	waitTask(t, cli, store.Keys().Task("r1", "m1"))
	if pt := getTask(t, cli, store.Keys().Task("r1", "late")); pt.State != inventory.TaskPending {
		t.Fatalf("late: %+v, want it pending while the view lags", pt)
	}
	// The view catches up: the task is carried out.
	fctx, stopFollowing := context.WithCancel(ctx)
	following := make(chan struct{})
	go func() { defer close(following); a.followDesired(fctx) }()
	if pt := waitTask(t, cli, store.Keys().Task("r1", "late")); pt.State != inventory.TaskDone {
		t.Fatalf("late: %+v, want done once the view has it", pt)
	}

	// A machine the current view lacks: failed once the view is known
	// current at the task's revision, well within the bound.
	start := time.Now()
	write("nosuch")
	pt := waitTask(t, cli, store.Keys().Task("r1", "nosuch"))
	if pt.State != inventory.TaskFailed || !strings.Contains(pt.Error, "not in rack r1's copy of the inventory") {
		t.Fatalf("nosuch: %+v, want failed: not in the rack's copy", pt)
	}
	if took := time.Since(start); took > bound/2 {
		t.Fatalf("nosuch failed after %s: the view was current, it need not wait for the bound %s", took, bound)
	}

	// A view that never catches up: failed at the bound, same reason.
	stopFollowing()
	<-following
	stopRunner()
	defer run(500 * time.Millisecond)()
	write("nosuch2")
	pt = waitTask(t, cli, store.Keys().Task("r1", "nosuch2"))
	if pt.State != inventory.TaskFailed || !strings.Contains(pt.Error, "not in rack r1's copy of the inventory") {
		t.Fatalf("nosuch2: %+v, want failed: not in the rack's copy", pt)
	}
}
