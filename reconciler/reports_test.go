package reconciler_test

import (
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/reconciler"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// commissioningWaits starts a region on machine m whose agent stays
// silent, and returns its status once the network boot is done and the
// region waits for the agent's report.
func commissioningWaits(t *testing.T) (*env, inventory.MachineStatus) {
	e := newEnv(t)
	e.sim.mu.Lock()
	e.sim.silent["m"] = true
	e.sim.mu.Unlock()
	e.apply(lab(t, map[string]string{"m": "state: ready"}), "r1")
	e.region("region-1", reconciler.Config{})
	st := e.waitStatus("m", time.Minute, "the agent step's boot done", func(st inventory.MachineStatus) bool {
		return st.Phase == "commissioning" && st.Step == "agent" && st.BootTaskID != "" && e.sim.booted("m", "commission") > 0
	})
	return e, st
}

func postResult(t *testing.T, e *env, rack, task string) {
	t.Helper()
	err := e.store.UpdateReport(e.ctx, rack, "m", task, clientv3.NoLease, func(r *inventory.MachineReport) {
		r.Facts = json.RawMessage(`{"cpu":{"count":2}}`)
		r.Result = &inventory.AgentResult{Success: true, At: time.Now().UTC()}
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A result posted for another boot (an earlier task, or a token of one)
// does not move the machine: the region says so in an event and keeps
// waiting; the right boot's result then commissions it.
func TestReportOfAnotherBootIsIgnored(t *testing.T) {
	e, st := commissioningWaits(t)
	postResult(t, e, "r1", st.BootTaskID+"-old")
	got := e.waitStatus("m", time.Minute, "the ignored report", func(st inventory.MachineStatus) bool { return st.IgnoredReport != "" })
	if got.Phase != "commissioning" || len(got.Facts) != 0 || !hasEvent(e.events("m"), "StaleReport", "") {
		t.Fatalf("a result of another boot moved the machine: %+v events %+v", got, e.events("m"))
	}
	postResult(t, e, "r1", st.BootTaskID)
	got = e.waitPhase("m", "ready", time.Minute)
	if string(got.Facts) != `{"cpu":{"count":2}}` {
		t.Fatalf("facts not copied into the status: %s", got.Facts)
	}
}

// A report under another rack's prefix (a rack credential writing about
// a machine not its own) is never read, even with the right task.
func TestReportOfAnotherRackIsIgnored(t *testing.T) {
	e, st := commissioningWaits(t)
	postResult(t, e, "r2", st.BootTaskID)
	// The region handles later writes in order: once it reacts to the
	// right rack's report it has long seen r2's.
	postResult(t, e, "r1", st.BootTaskID+"-probe")
	got := e.waitStatus("m", time.Minute, "the probe", func(st inventory.MachineStatus) bool { return st.IgnoredReport != "" || st.Phase != "commissioning" })
	if got.Phase != "commissioning" {
		t.Fatalf("a report under rack r2's prefix moved r1's machine: %+v", got)
	}
	postResult(t, e, "r1", st.BootTaskID)
	e.waitPhase("m", "ready", time.Minute)
}

// A flood of discovered machines' reports (and statuses an old rack
// wrote), far more than one etcd response may carry, neither stops the
// region's term from starting nor grows its heap: it reads the keys of
// its inventory's machines only. The region's client here accepts
// responses of 2 MiB at most (etcd's and gRPC's limits, scaled down).
func TestFloodOfDiscoveredReportsDoesNotStopTheRegion(t *testing.T) {
	e := newEnv(t)
	junk := strings.Repeat("x", 128<<10)
	const n = 160 // 20 MiB of reports and 20 MiB of statuses
	for i := range n {
		name := fmt.Sprintf("discovered-%012x", i)
		v := `{"taskID":"t","facts":{"junk":"` + junk + `"}}`
		if _, err := e.cli.Put(e.ctx, e.store.Keys().Report("r1", name), v); err != nil {
			t.Fatal(err)
		}
		if _, err := e.cli.Put(e.ctx, e.store.Keys().MachineStatus(name), `{"phase":"x","facts":{"junk":"`+junk+`"}}`); err != nil {
			t.Fatal(err)
		}
	}
	e.apply(lab(t, map[string]string{"a": "state: ready", "b": "state: ready"}), "r1")

	cfg := clientv3.Config{Endpoints: e.cfg.Endpoints, DialTimeout: 5 * time.Second, MaxCallRecvMsgSize: 2 << 20, Logger: zap.NewNop()}
	cli, err := clientv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	if _, err := cli.Get(e.ctx, e.store.Keys().Report("", ""), clientv3.WithPrefix()); err == nil {
		t.Fatal("a whole-prefix read of the flood fits in one response: the test does not test the bound")
	}
	store := inventory.NewStore(cli, "", quiet())

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	r := reconciler.New(reconciler.Config{ID: "region-1", Policy: testPolicy}, store, prometheus.NewRegistry(), quiet())
	done := make(chan error, 1)
	go func() { done <- r.Run(e.ctx) }()
	e.waitPhase("a", "ready", time.Minute)
	e.waitPhase("b", "ready", time.Minute)
	runtime.GC()
	runtime.ReadMemStats(&after)
	// The process's heap also holds the embedded etcd's (its raft log of
	// the flood), which moves by tens of MiB on its own: what bounds the
	// region is what it allocated, reading included, from the start of
	// its term until it reconciled.
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20 {
		t.Fatalf("the region allocated %d MiB to start its term over a 40 MiB flood", alloc>>20)
	}
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 64<<20 {
		t.Fatalf("the heap grew by %d MiB over a 40 MiB flood", grew>>20)
	}
	// Flood keys written during the term are dropped by the watches too.
	for i := range 20 {
		name := fmt.Sprintf("discovered-late-%04d", i)
		if _, err := e.cli.Put(e.ctx, e.store.Keys().Report("r1", name), `{"facts":{"junk":"`+junk+`"}}`); err != nil {
			t.Fatal(err)
		}
	}
	e.apply(lab(t, map[string]string{"a": "state: ready", "b": "state: ready", "c": "state: ready"}), "r2")
	e.waitPhase("c", "ready", time.Minute)
	select {
	case err := <-done:
		t.Fatalf("the region stopped: %v", err)
	default:
	}
}
