package rack

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/etcdtest"
	"github.com/kilnhq/kiln/spec/agentapi"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A rack stores its machines' reports under its own prefix only: never
// in the region's status/machines/ (which it cannot write under its etcd
// role), never under another rack's prefix; and a report of a new boot
// starts a fresh record.
func TestReportsGoUnderTheRacksPrefixOnly(t *testing.T) {
	cli, _ := etcdtest.Start(t)
	ctx := context.Background()
	store := inventory.NewStore(cli, "", quiet())
	a := New(Config{Rack: "r1", ID: "a"}, store, prometheus.NewRegistry(), quiet())
	b := bootBackend{a}

	before, err := cli.Get(ctx, store.Keys().Prefix(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []agentapi.Report{
		{TaskID: "T1", Facts: json.RawMessage(`{"cpu":{"count":2}}`)},
		{TaskID: "T1", Progress: &agentapi.Progress{Phase: "write", BytesWritten: 1, TotalBytes: 2}},
		{TaskID: "T1", Result: &agentapi.Result{Success: true, Reason: "ok"}},
		{TaskID: "T1", OS: &agentapi.OSReport{Hostname: "m1"}},
	} {
		if err := b.Report(ctx, "m1", r); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Report(ctx, "discovered-525400770009", agentapi.Report{Facts: json.RawMessage(`{}`)}); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, store.Keys().Prefix(), clientv3.WithPrefix(), clientv3.WithMinModRev(before.Header.Revision+1))
	if err != nil {
		t.Fatal(err)
	}
	var grants []string
	for _, g := range store.Keys().RackGrants("r1") {
		if g.Write {
			grants = append(grants, g.Prefix)
		}
	}
	for _, kv := range resp.Kvs {
		k := string(kv.Key)
		if !strings.HasPrefix(k, store.Keys().Report("r1", "")) {
			t.Errorf("the rack wrote %s, outside reports/r1/", k)
		}
		ok := false
		for _, p := range grants {
			ok = ok || strings.HasPrefix(k, p)
		}
		if !ok {
			t.Errorf("the rack wrote %s, outside its etcd role's write grants %v", k, grants)
		}
	}
	if len(resp.Kvs) != 2 {
		t.Errorf("wrote %d keys, want the reports of m1 and of the discovered machine", len(resp.Kvs))
	}
	rep, err := inventory.GetJSON[inventory.MachineReport](ctx, store, store.Keys().Report("r1", "m1"))
	if err != nil {
		t.Fatal(err)
	}
	if rep.TaskID != "T1" || len(rep.Facts) == 0 || rep.Progress == nil || rep.Result == nil || !rep.Result.Success || rep.OSReport == nil {
		t.Fatalf("report of boot T1: %+v", rep)
	}
	// The next boot's first report drops what the earlier boot said.
	if err := b.Report(ctx, "m1", agentapi.Report{TaskID: "T2", Progress: &agentapi.Progress{Phase: "erase"}}); err != nil {
		t.Fatal(err)
	}
	rep, err = inventory.GetJSON[inventory.MachineReport](ctx, store, store.Keys().Report("r1", "m1"))
	if err != nil {
		t.Fatal(err)
	}
	if rep.TaskID != "T2" || rep.Facts != nil || rep.Result != nil || rep.OSReport != nil || rep.Progress == nil {
		t.Fatalf("a new boot kept the earlier boot's report: %+v", rep)
	}
}

// Fast track: once the region records that the commissioning boot T1
// was handed the deploy (fastTrackFrom T1, boot T1.fast-track), T1's
// reports are filed under the deploy's boot, in a fresh record that
// does not carry the commissioning result. A token of any other boot
// keeps its own task (the region ignores it), and nothing moves without
// the region's record.
func TestFastTrackHandsTheBootsReportsOver(t *testing.T) {
	cli, _ := etcdtest.Start(t)
	ctx := context.Background()
	store := inventory.NewStore(cli, "", quiet())
	b := bootBackend{New(Config{Rack: "r1", ID: "a"}, store, prometheus.NewRegistry(), quiet())}
	report := func(task string, r agentapi.Report) inventory.MachineReport {
		t.Helper()
		r.TaskID = task
		if err := b.Report(ctx, "m1", r); err != nil {
			t.Fatal(err)
		}
		rep, err := inventory.GetJSON[inventory.MachineReport](ctx, store, store.Keys().Report("r1", "m1"))
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}
	ok := agentapi.Report{Result: &agentapi.Result{Success: true}}
	if rep := report("T1", ok); rep.TaskID != "T1" {
		t.Fatalf("no handover recorded yet: filed under %q, want T1", rep.TaskID)
	}
	st := inventory.MachineStatus{Phase: "deploying", BootTaskID: "T1.fast-track", FastTrackFrom: "T1"}
	v, _ := json.Marshal(st)
	if _, err := cli.Put(ctx, store.Keys().MachineStatus("m1"), string(v)); err != nil {
		t.Fatal(err)
	}
	rep := report("T1", agentapi.Report{Progress: &agentapi.Progress{Phase: "write"}})
	if rep.TaskID != "T1.fast-track" || rep.Result != nil || rep.Progress == nil {
		t.Fatalf("T1's deploy progress after the handover: %+v; want a fresh record of T1.fast-track", rep)
	}
	// An older boot's token (T0) is not handed anything.
	if rep := report("T0", ok); rep.TaskID != "T0" {
		t.Fatalf("a report of another boot was filed under %q, want its own T0", rep.TaskID)
	}
}
