package reconciler_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/etcdtest/invtest"
	"github.com/kilnhq/kiln/reconciler"
	"github.com/kilnhq/kiln/spec/kilntest"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// unavailability follows, on a watch of the status keys, how many of the
// given machines are out of phase deployed at once.
type unavailability struct {
	mu     sync.Mutex
	down   map[string]bool
	max    int
	starts []string // machines in the order they left deployed
}

func watchUnavailable(t *testing.T, e *env, machines []string) *unavailability {
	t.Helper()
	u := &unavailability{down: map[string]bool{}}
	want := map[string]bool{}
	for _, m := range machines {
		want[m] = true
	}
	resp, err := e.cli.Get(e.ctx, "probe")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(e.ctx)
	t.Cleanup(cancel)
	wc := e.cli.Watch(ctx, e.store.Keys().MachineStatus(""), clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	go func() {
		for wr := range wc {
			for _, ev := range wr.Events {
				name, ok := e.store.Keys().SplitMachineStatus(string(ev.Kv.Key))
				var st inventory.MachineStatus
				if !ok || !want[name] || json.Unmarshal(ev.Kv.Value, &st) != nil {
					continue
				}
				u.mu.Lock()
				down := st.Phase != reconciler.PhaseDeployed
				if down && !u.down[name] {
					u.starts = append(u.starts, name)
				}
				u.down[name] = down
				n := 0
				for _, d := range u.down {
					if d {
						n++
					}
				}
				u.max = max(u.max, n)
				u.mu.Unlock()
			}
		}
	}()
	return u
}

func (u *unavailability) result() (int, []string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.max, append([]string(nil), u.starts...)
}

const webProfile = `---
apiVersion: kiln.dev/v1alpha1
kind: Profile
metadata: {name: web}
spec:
  machine: {erase: none}
  rollout: {maxUnavailable: 2}
`

// A profile's rollout redeploys its drifted machines at most
// maxUnavailable at a time, in name order; a failure pauses it until
// kiln retry; a machine in maintenance is skipped; a machine of no
// rollout profile is only marked ImageDrift.
func TestRolloutBoundsUnavailable(t *testing.T) {
	e := newEnv(t)
	names := []string{"w1", "w2", "w3", "w4", "w5"}
	machines := map[string]string{"solo": "state: deployed"}
	set := func(image string) {
		for _, n := range names {
			machines[n] = "state: deployed\nprofile: web\nimage: " + image
		}
		machines["w5"] += "\nmaintenance: " + map[bool]string{true: "true", false: "false"}[image != "debian"]
		machines["solo"] = "state: deployed\nimage: " + image
	}
	set("debian")
	e.apply(invtest.Load(t, labYAML(machines)+webProfile), "r1")
	policy := testPolicy
	policy.MaxAttempts = 1 // a failure waits for a person (kiln retry)
	_, reg := e.region("region-1", reconciler.Config{Policy: policy})
	for _, n := range append(names, "solo") {
		e.waitPhase(n, "deployed", time.Minute)
	}

	u := watchUnavailable(t, e, names[:4]) // w5 goes into maintenance
	e.sim.mu.Lock()
	e.sim.failures["w1"] = 1
	e.sim.mu.Unlock()
	set("debian-next")
	e.apply(invtest.Load(t, labYAML(machines)+webProfile), "r2")

	// w1 fails: the rollout pauses; w2 (started with it) finishes; w3
	// and w4 wait, saying why.
	e.waitPhase("w1", "failed-deploying", time.Minute)
	for _, n := range []string{"w3", "w4"} {
		e.waitStatus(n, time.Minute, "paused rollout", func(st inventory.MachineStatus) bool {
			c := st.Condition(reconciler.CondRolloutWaiting)
			return c != nil && c.Status == "True" && strings.Contains(c.Message, "paused: w1 failed")
		})
	}
	e.waitStatus("w2", time.Minute, "w2 redeployed", func(st inventory.MachineStatus) bool {
		return st.Phase == "deployed" && st.DeployedImage == "debian-next"
	})
	if st := e.waitPhase("w3", "deployed", time.Second); st.DeployedImage != "debian" {
		t.Fatalf("w3 redeployed while the rollout was paused: %+v", st)
	}
	if _, err := reconciler.Retry(e.ctx, e.store, "w1"); err != nil {
		t.Fatal(err)
	}
	for _, n := range names[:4] {
		e.waitStatus(n, time.Minute, n+" redeployed", func(st inventory.MachineStatus) bool {
			return st.Phase == "deployed" && st.DeployedImage == "debian-next"
		})
	}
	peak, order := u.result()
	if peak != 2 {
		t.Errorf("at most %d machines were unavailable at once, want exactly maxUnavailable 2", peak)
	}
	// w1 and w2 take the two slots together (either may be written
	// first); w3 and w4 come after.
	if len(order) != 4 || !slices.Equal(slices.Sorted(slices.Values(order[:2])), []string{"w1", "w2"}) {
		t.Errorf("machines left deployed in the order %q, want w1 and w2 first (name order), then w3 and w4", order)
	}
	if st := e.waitPhase("w5", "maintenance", time.Second); st.DeployedImage != "debian" || e.sim.booted("w5", "deploy") != 1 {
		t.Errorf("w5, in maintenance, was redeployed: %+v", st)
	}
	st := e.waitStatus("solo", time.Minute, "ImageDrift", func(st inventory.MachineStatus) bool {
		c := st.Condition(reconciler.CondImageDrift)
		return c != nil && c.Status == "True"
	})
	if st.Phase != "deployed" || e.sim.booted("solo", "deploy") != 1 {
		t.Errorf("a machine without a rollout profile was redeployed: %+v", st)
	}
	for _, n := range names[1:4] {
		if got := e.sim.booted(n, "deploy"); got != 2 {
			t.Errorf("%s booted %d times to deploy, want 2", n, got)
		}
	}
	if !hasEvent(e.events("w3"), "RolloutWaiting", "") || !hasEvent(e.events("w3"), "RolloutRedeploy", "deploying") {
		t.Errorf("w3's events lack RolloutWaiting and RolloutRedeploy: %+v", e.events("w3"))
	}
	want := fmt.Sprintf(`
# HELP kiln_rollout_machines %s
# TYPE kiln_rollout_machines gauge
kiln_rollout_machines{profile="web",state="current"} 4
kiln_rollout_machines{profile="web",state="paused"} 0
kiln_rollout_machines{profile="web",state="pending"} 0
kiln_rollout_machines{profile="web",state="unavailable"} 0
`, reconciler.RolloutMetricHelp)
	var err error
	kilntest.Eventually(t, 10*time.Second, "kiln_rollout_machines", func() bool {
		err = testutil.GatherAndCompare(reg, strings.NewReader(want), "kiln_rollout_machines")
		return err == nil
	})
}
