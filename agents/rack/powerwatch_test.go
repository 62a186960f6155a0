package rack

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/etcdtest"
	"github.com/kilnhq/kiln/inventory/etcdtest/invtest"
	"github.com/kilnhq/kiln/power"
	"github.com/kilnhq/kiln/power/vbmc"
	"github.com/kilnhq/kiln/power/vbmc/vbmctest"
	"github.com/kilnhq/kiln/spec/kilntest"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The leader's power watch records what a machine's BMC says, and sees a
// machine switched off behind Kiln's back; a manual machine and another
// rack's machine are never polled.
func TestPowerWatchRecordsObservations(t *testing.T) {
	cli, _ := etcdtest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store := inventory.NewStore(cli, "", quiet())
	mem := vbmc.NewMemory()
	mem.SetState(vbmc.On)
	b := vbmctest.Start(t, mem)
	doc := tasksInventory + fmt.Sprintf(`---
apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: vm1}
spec:
  interfaces: [{name: eno1, mac: "02:00:00:00:00:01", subnet: net1}]
  bmc: {driver: ipmi, address: %q, username: %s, password: %s}
`, b.IPMIAddr(), vbmctest.Username, vbmctest.Password) + machineDoc(2, "hand", "manual")
	inv := invtest.Load(t, doc)
	exec := power.NewExecutor(power.Policy{}, power.NewMetrics(prometheus.NewRegistry()), quiet())
	defer exec.Close()
	a := &Agent{cfg: Config{Rack: "r1", ID: "agent-1", PowerPollInterval: 100 * time.Millisecond}, store: store, log: quiet(),
		inv: inv, power: exec, ready: make(chan struct{}), changed: make(chan struct{})}
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	fenceKey := store.Keys().RackElection("r1") + "agent-1"
	put, err := cli.Put(ctx, fenceKey, "agent-1", clientv3.WithLease(lease.ID))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.powerWatch(inventory.Fence{Key: fenceKey, Rev: put.Header.Revision})(ctx) }()
	defer func() { cancel(); <-done }()

	observed := func(machine string) (inventory.PowerObservation, bool) {
		resp, err := cli.Get(ctx, store.Keys().PowerState("r1", machine))
		if err != nil || len(resp.Kvs) == 0 {
			return inventory.PowerObservation{}, false
		}
		o, err := inventory.DecodePowerState(resp.Kvs[0].Value)
		return o, err == nil
	}
	kilntest.Eventually(t, 10*time.Second, "vm1 observed on", func() bool {
		o, ok := observed("vm1")
		return ok && o.State == "on" && o.Rack == "r1" && o.Error == "" && o.Agent == "agent-1"
	})
	mem.SetState(vbmc.Off) // behind Kiln's back
	kilntest.Eventually(t, 10*time.Second, "vm1 observed off", func() bool {
		o, ok := observed("vm1")
		return ok && o.State == "off"
	})
	if _, ok := observed("hand"); ok {
		t.Fatal("a manual machine was polled")
	}
	// A deposed leader's observations are not written.
	if _, err := cli.Delete(ctx, fenceKey); err != nil {
		t.Fatal(err)
	}
	err = store.PutPowerState(ctx, inventory.Fence{Key: fenceKey, Rev: put.Header.Revision}, "vm1", inventory.PowerObservation{Rack: "r1", State: "on"})
	if !errors.Is(err, inventory.ErrFenceLost) {
		t.Fatalf("write with a lost fence: %v", err)
	}
}
