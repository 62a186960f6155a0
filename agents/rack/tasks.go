package rack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/power"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Powerer is what the task runner needs of the power executor.
// *power.Executor implements it with the power execution policy.
type Powerer interface {
	PowerOn(ctx context.Context, t power.Target) error
	PowerOff(ctx context.Context, t power.Target, hard bool) error
	PowerCycle(ctx context.Context, t power.Target) error
	Status(ctx context.Context, t power.Target) (power.State, error)
	SetBoot(ctx context.Context, t power.Target, b power.Boot) error
}

// inventoryCatchUp bounds the wait for the agent's copy of the inventory
// to reach the revision a task was written at.
const inventoryCatchUp = 30 * time.Second

// tasks carries out the region's power tasks for this rack's machines
// while this agent leads: tasks/<rack>/<machine>, pending → done, failed
// or manual. Writes are fenced by the election key and compared against
// the task they answer, so a replaced task's outcome is dropped.
type tasks struct {
	a     *Agent
	power Powerer
	fence inventory.Fence
	now   func() time.Time
	// catchUp bounds the wait for this agent's copy of the inventory to
	// reach a task's revision (inventoryCatchUp).
	catchUp time.Duration

	mu       sync.Mutex
	inflight map[string]string    // machine → the task ID a goroutine works on
	next     map[string]taskWrite // machine → the task to do after it
	wg       sync.WaitGroup
}

type taskWrite struct {
	key    string
	task   inventory.PowerTask
	modRev int64
}

func (t *tasks) run(ctx context.Context) error {
	defer t.wg.Wait()
	prefix := t.a.store.Keys().Task(t.a.cfg.Rack, "")
	rev, err := t.a.store.RangeRevs(ctx, prefix, 0, func(k string, v []byte, mod int64) error {
		t.consider(ctx, k, v, mod)
		return nil
	})
	if err != nil {
		return fmt.Errorf("read power tasks: %w", err)
	}
	return inventory.EachEvent(ctx, t.a.store.WatchPrefix(ctx, prefix, rev), "power tasks", func(ev *clientv3.Event) {
		if ev.Type == clientv3.EventTypePut {
			t.consider(ctx, string(ev.Kv.Key), ev.Kv.Value, ev.Kv.ModRevision)
		}
	})
}

// consider starts a pending (or orphaned running) task, one at a time
// per machine.
func (t *tasks) consider(ctx context.Context, key string, v []byte, mod int64) {
	var pt inventory.PowerTask
	if err := json.Unmarshal(v, &pt); err != nil {
		_, machine, _ := t.a.store.Keys().SplitTask(key)
		t.a.log.Warn("ignoring an undecodable power task", "machine", machine, "key", key, "err", err)
		return
	}
	if pt.State != inventory.TaskPending && pt.State != inventory.TaskRunning {
		return
	}
	w := taskWrite{key: key, task: pt, modRev: mod}
	t.mu.Lock()
	defer t.mu.Unlock()
	if id, busy := t.inflight[pt.Machine]; busy {
		if id != pt.ID { // a newer task: do it after this one
			t.next[pt.Machine] = w
		}
		return
	}
	t.inflight[pt.Machine] = pt.ID
	t.wg.Add(1)
	go t.do(ctx, w)
}

func (t *tasks) do(ctx context.Context, w taskWrite) {
	defer t.wg.Done()
	for {
		t.execute(ctx, w)
		t.mu.Lock()
		n, ok := t.next[w.task.Machine]
		delete(t.next, w.task.Machine)
		if !ok || ctx.Err() != nil {
			delete(t.inflight, w.task.Machine)
			t.mu.Unlock()
			return
		}
		t.inflight[w.task.Machine] = n.task.ID
		t.mu.Unlock()
		w = n
	}
}

// execute carries out one task and records its outcome.
func (t *tasks) execute(ctx context.Context, w taskWrite) {
	pt := w.task
	log := t.a.log.With("machine", pt.Machine, "task", pt.ID, "action", pt.Action)
	m, ok := t.a.machineSoon(ctx, pt.Machine, w.modRev, t.catchUp)
	if !ok {
		if ctx.Err() != nil {
			return // no longer leading: the successor takes the task
		}
		t.finish(ctx, w, inventory.TaskFailed, "", fmt.Sprintf("machine %s is not in rack %s's copy of the inventory "+
			"(the task was written at etcd revision %d; waited up to %s for the copy to reach it)", pt.Machine, t.a.cfg.Rack, w.modRev, t.catchUp))
		return
	}
	target, err := power.TargetFor(m)
	if err != nil {
		t.finish(ctx, w, inventory.TaskFailed, "", err.Error())
		return
	}
	resumed := pt.State == inventory.TaskRunning // a leader died while doing it
	// Mark it running, so that a successor knows it may have happened.
	pt.State, pt.Agent = inventory.TaskRunning, t.a.cfg.ID
	mod, ok := t.write(ctx, w.key, pt, w.modRev)
	if !ok {
		return // replaced, or we no longer lead
	}
	w.modRev = mod

	if pt.Action == inventory.TaskNetboot {
		// The boot's token record, before the machine can ask for it:
		// the boot's first script fetch mints the token. A resumed task
		// keeps the record its dead leader wrote (it may be handed out).
		toks := t.a.store.Tokens(t.a.cfg.Rack)
		rec := inventory.BootToken{State: inventory.TokenPending, TaskID: pt.ID, Purpose: pt.Purpose}
		var err error
		if old, gerr := toks.Get(ctx, pt.Machine); !resumed || gerr != nil || old.TaskID != pt.ID {
			err = toks.Put(ctx, pt.Machine, rec)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Warn("cannot write the boot-token record", "err", err)
			t.finish(ctx, w, inventory.TaskFailed, "", "write the boot-token record: "+err.Error())
			return
		}
	}
	var state power.State
	switch pt.Action {
	case inventory.TaskNetboot, inventory.TaskDiskboot:
		dev := power.Network
		if pt.Action == inventory.TaskDiskboot {
			dev = power.Disk
		}
		state, err = t.boot(ctx, target, power.BootFor(m, dev), resumed)
	case inventory.TaskOff:
		if err = t.power.PowerOff(ctx, target, true); err == nil {
			state = power.Off
		}
	default:
		err = power.Permanent(fmt.Errorf("unknown power action %q", pt.Action))
	}
	switch {
	case errors.Is(err, power.ErrManual):
		log.Info("power task needs a person", "err", err)
		t.finish(ctx, w, inventory.TaskManual, "", err.Error())
	case err != nil:
		log.Warn("power task failed", "err", err)
		t.finish(ctx, w, inventory.TaskFailed, string(state), err.Error())
	default:
		log.Debug("power task done", "power", state)
		t.finish(ctx, w, inventory.TaskDone, string(state), "")
	}
}

// boot sets the next boot device (in the machine's firmware mode) and
// powers the machine on, cycling it when it is on. A resumed task whose machine is already on is taken as
// done: the dead leader's cycle happened.
func (t *tasks) boot(ctx context.Context, target power.Target, b power.Boot, resumed bool) (power.State, error) {
	st, err := t.power.Status(ctx, target)
	if err != nil {
		return power.Unknown, err
	}
	if resumed && st == power.On {
		return st, nil
	}
	if err := t.power.SetBoot(ctx, target, b); err != nil && !errors.Is(err, power.ErrUnsupported) {
		return st, err
	}
	if st == power.On {
		err = t.power.PowerCycle(ctx, target)
	} else {
		err = t.power.PowerOn(ctx, target)
	}
	if err != nil {
		return st, err
	}
	return power.On, nil
}

func (t *tasks) finish(ctx context.Context, w taskWrite, state, pwr, msg string) {
	pt := w.task
	pt.State, pt.Power, pt.Error, pt.Agent, pt.DoneAt = state, pwr, msg, t.a.cfg.ID, t.now().UTC()
	t.write(ctx, w.key, pt, w.modRev)
}

// write stores a task if it is still the one we read and we still lead.
func (t *tasks) write(ctx context.Context, key string, pt inventory.PowerTask, modRev int64) (int64, bool) {
	b, err := json.Marshal(pt)
	if err != nil {
		return 0, false
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	resp, err := t.a.store.Client().Txn(wctx).If(
		t.fence.Held(),
		clientv3.Compare(clientv3.ModRevision(key), "=", modRev),
	).Then(clientv3.OpPut(key, string(b))).Commit()
	if err != nil {
		t.a.log.Warn("could not record the power task", "machine", pt.Machine, "task", pt.ID, "err", err)
		return 0, false
	}
	if !resp.Succeeded {
		t.a.log.Debug("power task replaced or leadership lost; outcome dropped", "machine", pt.Machine, "task", pt.ID,
			"state", strings.ToLower(pt.State))
		return 0, false
	}
	return resp.Header.Revision, true
}
