package inventory

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory/etcd"
	"github.com/kilnhq/kiln/inventory/etcdtest"
	"github.com/kilnhq/kiln/spec"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func mustLoad(t testing.TB, r *spec.Result) *spec.Inventory {
	t.Helper()
	if r.Problems.Errors() > 0 {
		t.Fatalf("inventory invalid:\n%s", r.Problems)
	}
	return r.Inventory
}

func TestApplySnapshotAndInPlaceEdit(t *testing.T) {
	cli, _ := etcdtest.Start(t)
	ctx := context.Background()
	st := NewStore(cli, "", quiet())
	if _, _, err := st.Current(ctx); !errors.Is(err, ErrNotFound) {
		t.Fatalf("empty store: got %v, want ErrNotFound", err)
	}
	inv := mustLoad(t, spec.Load(os.DirFS("../examples/lab")))
	res, err := st.Apply(ctx, inv, ApplyMeta{Source: "lab", Revision: "r1"})
	if err != nil {
		t.Fatal(err)
	}
	if !res.NewGeneration || res.Added != inv.Len() {
		t.Fatalf("first apply: %+v", res)
	}
	snap, err := st.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := snap.Inventory.Len(); got != inv.Len() {
		t.Fatalf("snapshot has %d objects, want %d", got, inv.Len())
	}
	m := snap.Inventory.Machines["vm-1"]
	if m.Spec.Image != "debian-12" || m.Spec.Rack != "lab-r1" || m.Origin.File != "machines.yaml" {
		t.Fatalf("vm-1 read back wrong: %+v", m)
	}
	if m.Spec.BMC.Password == nil || m.Spec.BMC.Password.FromEnv != "KILN_LAB_BMC_PASSWORD" {
		t.Fatalf("vm-1 password ref lost: %+v", m.Spec.BMC)
	}

	res, err = st.Apply(ctx, inv, ApplyMeta{Source: "lab", Revision: "r1"})
	if err != nil || !res.Unchanged {
		t.Fatalf("same revision again: %+v %v", res, err)
	}

	inv.Machines["vm-2"].Spec.State = spec.StateDeployed
	res, err = st.Apply(ctx, inv, ApplyMeta{Source: "lab", Revision: "r2"})
	if err != nil {
		t.Fatal(err)
	}
	if res.NewGeneration || res.Changed != 1 || res.Requests != 2 {
		t.Fatalf("one-machine edit should be one in-place transaction: %+v", res)
	}
	snap, err = st.Snapshot(ctx, spec.KindMachine)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Pointer.Revision != "r2" || snap.Inventory.Machines["vm-2"].Spec.State != spec.StateDeployed {
		t.Fatalf("edit not visible: %+v", snap.Pointer)
	}
}

func TestRemovedMachinesBecomeUnmanaged(t *testing.T) {
	cli, _ := etcdtest.Start(t)
	ctx := context.Background()
	st := NewStore(cli, "", quiet())
	inv := mustLoad(t, spec.Load(os.DirFS("../examples/lab")))
	if _, err := st.Apply(ctx, inv, ApplyMeta{Source: "lab", Revision: "r1"}); err != nil {
		t.Fatal(err)
	}
	delete(inv.Machines, "vm-3")
	inv.Racks["lab-r1"].Spec.Switches[0].Ports = inv.Racks["lab-r1"].Spec.Switches[0].Ports[:2]
	res, err := st.Apply(ctx, inv, ApplyMeta{Source: "lab", Revision: "r2"})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Unmanaged) != 1 || res.Unmanaged[0] != "vm-3" || res.Removed != 1 {
		t.Fatalf("apply result: %+v", res)
	}
	snap, err := st.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	u, ok := snap.Unmanaged["vm-3"]
	if !ok || u.RemovedIn != "r2" || snap.Inventory.Machines["vm-3"] != nil {
		t.Fatalf("vm-3 should be unmanaged, removed in r2: %+v", snap.Unmanaged)
	}
	// The marker survives further revisions, and a fresh store (no cache)
	// carries it too.
	st2 := NewStore(cli, "", quiet())
	inv.Machines["vm-1"].Spec.Zone = "elsewhere"
	if _, err := st2.Apply(ctx, inv, ApplyMeta{Source: "lab", Revision: "r3"}); err != nil {
		t.Fatal(err)
	}
	if snap, _ = st2.Snapshot(ctx, KindUnmanaged); snap.Unmanaged["vm-3"].RemovedIn != "r2" {
		t.Fatalf("marker lost: %+v", snap.Unmanaged)
	}
	// Adding the machine back makes it managed again.
	inv = mustLoad(t, spec.Load(os.DirFS("../examples/lab")))
	if _, err := st2.Apply(ctx, inv, ApplyMeta{Source: "lab", Revision: "r4"}); err != nil {
		t.Fatal(err)
	}
	if snap, _ = st2.Snapshot(ctx); len(snap.Unmanaged) != 0 || snap.Inventory.Machines["vm-3"] == nil {
		t.Fatalf("vm-3 should be managed again: %+v", snap.Unmanaged)
	}
}

// A revision bigger than one transaction is written in chunks; a reader
// running all the while must only ever see one whole revision.
func TestLargeApplyIsAtomic(t *testing.T) {
	cli, _ := etcdtest.Start(t)
	ctx := context.Background()
	st := NewStore(cli, "", quiet())
	st.MaxOps = 50 // many chunks
	invA := mustLoad(t, spec.Load(fleet(3000, "a")))
	invB := mustLoad(t, spec.Load(fleet(2500, "b")))
	if _, err := st.Apply(ctx, invA, ApplyMeta{Source: "t", Revision: "a"}); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var reads, sawB int
	var bad error
	wg.Add(1)
	go func() {
		defer wg.Done()
		reader := NewStore(cli, "", quiet())
		for {
			select {
			case <-stop:
				return
			default:
			}
			snap, err := reader.Snapshot(ctx, spec.KindMachine)
			if err != nil {
				bad = err
				return
			}
			reads++
			want := map[string]int{"a": 3000, "b": 2500}[snap.Pointer.Revision]
			zones := map[string]int{}
			for _, m := range snap.Inventory.Machines {
				zones[m.Spec.Zone]++
			}
			if len(zones) != 1 || zones[snap.Pointer.Revision] != want {
				bad = errors.New("mixed snapshot: " + snap.Pointer.Revision + " " + fmtCounts(zones))
				return
			}
			if snap.Pointer.Revision == "b" {
				sawB++
				if sawB > 2 {
					return
				}
			}
		}
	}()
	res, err := st.Apply(ctx, invB, ApplyMeta{Source: "t", Revision: "b"})
	if err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(stop)
	if bad != nil {
		t.Fatal(bad)
	}
	if !res.NewGeneration || res.Requests < 2500/50 {
		t.Fatalf("expected a chunked new generation: %+v", res)
	}
	if reads < 2 {
		t.Fatalf("reader ran only %d times", reads)
	}
	// Old generations are collected: after a third large apply only the
	// current and previous generations remain.
	if _, err := st.Apply(ctx, invA, ApplyMeta{Source: "t", Revision: "a2"}); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, st.Keys().GenIndex(""), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count != 2 {
		t.Fatalf("%d generations left, want 2", resp.Count)
	}
}

func fmtCounts(m map[string]int) string {
	s := ""
	for k, v := range m {
		s += k + "=" + itoa(v) + " "
	}
	return s
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

// Two writers with their own caches race; every apply either lands whole
// or is refused with ErrConflict, and the result is one whole revision.
func TestConcurrentWritersNeverMix(t *testing.T) {
	cli, _ := etcdtest.Start(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	for _, zone := range []string{"a", "b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := NewStore(cli, "", quiet())
			inv := mustLoad(t, spec.Load(os.DirFS("../examples/lab")))
			for i := 0; i < 15; i++ {
				for _, m := range inv.Machines {
					m.Spec.Zone = zone + itoa(i)
				}
				_, err := st.Apply(ctx, inv, ApplyMeta{Source: "s", Revision: zone + itoa(i)})
				if err != nil && !errors.Is(err, ErrConflict) {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	snap, err := NewStore(cli, "", quiet()).Snapshot(ctx, spec.KindMachine)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range snap.Inventory.Machines {
		if m.Spec.Zone != snap.Pointer.Revision {
			t.Fatalf("machine %s has zone %s but the applied revision is %s", m.Metadata.Name, m.Spec.Zone, snap.Pointer.Revision)
		}
	}
}

// A writer whose cache is stale notices and diffs against what is stored.
func TestStaleCacheIsReloaded(t *testing.T) {
	cli, _ := etcdtest.Start(t)
	ctx := context.Background()
	a, b := NewStore(cli, "", quiet()), NewStore(cli, "", quiet())
	inv := mustLoad(t, spec.Load(os.DirFS("../examples/lab")))
	if _, err := a.Apply(ctx, inv, ApplyMeta{Source: "s", Revision: "1"}); err != nil {
		t.Fatal(err)
	}
	inv.Machines["vm-1"].Spec.Zone = "x"
	if _, err := b.Apply(ctx, inv, ApplyMeta{Source: "s", Revision: "2"}); err != nil {
		t.Fatal(err)
	}
	inv.Machines["vm-2"].Spec.Zone = "y"
	res, err := a.Apply(ctx, inv, ApplyMeta{Source: "s", Revision: "3"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Changed != 1 {
		t.Fatalf("diff against the stored revision should change only vm-2: %+v", res)
	}
}

func TestUpdateIsCompareAndSwap(t *testing.T) {
	cli, _ := etcdtest.Start(t)
	st := NewStore(cli, "", quiet())
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				err := UpdateJSON(ctx, st, st.Keys().MachineStatus("m1"), func(s *MachineStatus) error {
					s.ObservedGeneration++
					return nil
				})
				if err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	got, err := GetJSON[MachineStatus](ctx, st, st.Keys().MachineStatus("m1"))
	if err != nil || got.ObservedGeneration != 100 {
		t.Fatalf("got %d (%v), want 100: an update was lost", got.ObservedGeneration, err)
	}
}

func TestEtcdUnreachable(t *testing.T) {
	cli, err := etcd.Connect(etcd.Config{Endpoints: []string{"http://" + etcdtest.FreeAddr(t)}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	st := NewStore(cli, "", quiet())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	inv := mustLoad(t, spec.Load(os.DirFS("../examples/lab")))
	if _, err := st.Apply(ctx, inv, ApplyMeta{Source: "s", Revision: "1"}); err == nil {
		t.Fatal("apply to an unreachable etcd succeeded")
	}
}

func TestObjectTooLargeIsNotRetried(t *testing.T) {
	cli, _ := etcdtest.Start(t)
	st := NewStore(cli, "", quiet())
	inv := mustLoad(t, spec.Load(os.DirFS("../examples/lab")))
	inv.Machines["vm-1"].Spec.UserData = "#cloud-config\n#" + strings.Repeat("x", 2<<20)
	_, err := st.Apply(context.Background(), inv, ApplyMeta{Source: "s", Revision: "big"})
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "vm-1") {
		t.Fatalf("got %v, want ErrTooLarge naming vm-1", err)
	}
	if _, _, err := st.Current(context.Background()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("nothing should have been applied: %v", err)
	}
}
