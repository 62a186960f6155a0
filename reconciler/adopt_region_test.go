package reconciler_test

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/reconciler"
	"github.com/kilnhq/kiln/spec/kilntest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// taskWatch records every write to a power task key from the moment it
// starts until the test ends.
type taskWatch struct {
	mu   sync.Mutex
	keys []string
}

func (e *env) watchTasks() *taskWatch {
	e.t.Helper()
	resp, err := e.cli.Get(e.ctx, e.store.Keys().Task("", ""), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		e.t.Fatal(err)
	}
	w := &taskWatch{}
	wc := e.cli.Watch(e.ctx, e.store.Keys().Task("", ""), clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	go func() {
		for wr := range wc {
			w.mu.Lock()
			for _, ev := range wr.Events {
				w.keys = append(w.keys, string(ev.Kv.Key))
			}
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *taskWatch) wrote(key string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Contains(w.keys, key)
}

// TestAdoptNeverPowers applies machines that already run their OS, one of
// them in maintenance at first, beside a plain new machine: the adopted
// ones reach deployed and no power task is ever written for them, while
// the plain one is powered and commissioned as usual.
func TestAdoptNeverPowers(t *testing.T) {
	e := newEnv(t)
	tasks := e.watchTasks()
	machines := map[string]string{
		"running": "state: deployed\nadopt: true\ndeployGeneration: 3",
		"paused":  "state: deployed\nadopt: true\nmaintenance: true",
		"fresh":   "state: ready",
	}
	e.apply(lab(t, machines), "r1")
	e.region("region-1", reconciler.Config{})

	st := e.waitPhase("running", "deployed", time.Minute)
	if st.DeployedImage != "debian" || st.DeployedGeneration != 3 || st.DeployedAt.IsZero() || st.BootPurpose != "local" || st.TaskID != "" {
		t.Fatalf("adopted status: %+v", st)
	}
	if c := st.Condition(reconciler.CondAdopted); c == nil || c.Status != "True" {
		t.Fatalf("Adopted condition: %+v", st.Conditions)
	}
	if !hasEvent(e.events("running"), "Adopted", "deployed") {
		t.Fatalf("no Adopted event: %+v", e.events("running"))
	}
	e.waitPhase("paused", "maintenance", time.Minute)
	e.waitPhase("fresh", "ready", time.Minute)

	// Ending maintenance adopts the paused machine.
	machines["paused"] = "state: deployed\nadopt: true"
	e.apply(lab(t, machines), "r2")
	e.waitPhase("paused", "deployed", time.Minute)
	// A later machine, powered as usual, fences the watch: once its task
	// is seen, every earlier task write has been seen too.
	machines["later"] = "state: ready"
	e.apply(lab(t, machines), "r3")
	kilntest.Eventually(t, time.Minute, "a power task of the later machine", func() bool { return tasks.wrote(e.store.Keys().Task("r1", "later")) })

	if !tasks.wrote(e.store.Keys().Task("r1", "fresh")) {
		t.Fatal("the watch saw no task of the new machine: it watches the wrong keys")
	}
	for _, m := range []string{"running", "paused"} {
		if tasks.wrote(e.store.Keys().Task("r1", m)) {
			t.Errorf("a power task was written for adopted machine %s", m)
		}
		if st := e.waitPhase(m, "deployed", time.Second); st.Phase != "deployed" {
			t.Errorf("%s left deployed: %+v", m, st)
		}
	}
	if n := e.sim.count("running", inventory.TaskNetboot) + e.sim.count("paused", inventory.TaskNetboot); n != 0 {
		t.Errorf("adopted machines were network-booted %d times", n)
	}
}

// TestAdoptedReleaseCommissions releases an adopted machine: it is powered
// off through the normal path, then commissioned (it never was).
func TestAdoptedReleaseCommissions(t *testing.T) {
	e := newEnv(t)
	machines := map[string]string{"running": "state: deployed\nadopt: true"}
	e.apply(lab(t, machines), "r1")
	e.region("region-1", reconciler.Config{})
	e.waitPhase("running", "deployed", time.Minute)

	machines["running"] = "state: ready" // adopt goes: it needs state: deployed
	e.apply(lab(t, machines), "r2")
	st := e.waitStatus("running", time.Minute, "ready and commissioned", func(st inventory.MachineStatus) bool {
		return st.Phase == "ready" && !st.CommissionedAt.IsZero()
	})
	if len(st.Facts) == 0 || st.DeployedImage != "" || reconciler.AdoptedUncommissioned(&st) {
		t.Fatalf("released adopted machine: %+v", st)
	}
	evs := e.events("running")
	for _, r := range []string{"Adopted", "Releasing", "Released", "Commissioning", "Commissioned"} {
		if !hasEvent(evs, r, "") {
			t.Errorf("no %s event: %+v", r, evs)
		}
	}
	if n := e.sim.booted("running", "commission"); n != 1 {
		t.Errorf("commissioned %d times, want 1", n)
	}
}
