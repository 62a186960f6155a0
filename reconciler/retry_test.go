package reconciler_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/etcdtest"
	"github.com/kilnhq/kiln/reconciler"
	"github.com/kilnhq/kiln/spec"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// racing is a store whose first read-modify-write sees a concurrent
// write land between its read and its compare-and-swap.
type racing struct {
	*inventory.Store
	cli   *clientv3.Client
	write string // the concurrent status
	done  bool
}

func (r *racing) Update(ctx context.Context, key string, fn func([]byte) ([]byte, error), opts ...clientv3.OpOption) error {
	return r.Store.Update(ctx, key, func(old []byte) ([]byte, error) {
		if !r.done {
			r.done = true
			if _, err := r.cli.Put(ctx, key, r.write); err != nil {
				return nil, err
			}
		}
		return fn(old)
	}, opts...)
}

func TestRetry(t *testing.T) {
	cli, _ := etcdtest.Start(t)
	ctx := context.Background()
	store := inventory.NewStore(cli, "", quiet())
	const failed = `{"phase":"failed-deploying","attempts":3,"reason":"disk write failed"}`
	cases := map[string]struct {
		status string // "" = no status
		race   string // a concurrent write between read and swap
		from   string
		err    error
		retry  bool // the stored status asks for a retry afterwards
	}{
		"failed":          {status: failed, from: "failed-deploying", retry: true},
		"unknown machine": {err: inventory.ErrNotFound},
		"not failed":      {status: `{"phase":"deployed"}`, from: "deployed", err: reconciler.ErrNotFailed},
		"no phase":        {status: `{}`, err: reconciler.ErrNotFailed},
		"concurrent change to not failed": {
			status: failed, race: `{"phase":"deploying","attempts":0}`, from: "deploying", err: reconciler.ErrNotFailed,
		},
		"concurrent change still failed": {
			status: failed, race: `{"phase":"failed-commissioning","attempts":1}`, from: "failed-commissioning", retry: true,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			machine := "m-" + name
			key := store.Keys().MachineStatus(machine)
			if tc.status != "" {
				if _, err := cli.Put(ctx, key, tc.status); err != nil {
					t.Fatal(err)
				}
			}
			var s reconciler.StatusUpdater = store
			if tc.race != "" {
				s = &racing{Store: store, cli: cli, write: tc.race}
			}
			from, err := reconciler.Retry(ctx, s, machine)
			if !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if from != tc.from {
				t.Errorf("from = %q, want %q", from, tc.from)
			}
			resp, err := cli.Get(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.Kvs) == 0 {
				if tc.status != "" {
					t.Fatal("status deleted")
				}
				return
			}
			var st inventory.MachineStatus
			if err := json.Unmarshal(resp.Kvs[0].Value, &st); err != nil {
				t.Fatal(err)
			}
			if st.Retry != tc.retry {
				t.Errorf("retry = %v, want %v (status %s)", st.Retry, tc.retry, resp.Kvs[0].Value)
			}
			want := tc.status
			if tc.race != "" {
				want = tc.race
			}
			var before inventory.MachineStatus
			json.Unmarshal([]byte(want), &before)
			before.Retry = st.Retry
			if b1, b2 := mustJSON(t, before), mustJSON(t, st); b1 != b2 {
				t.Errorf("other fields changed:\n got %s\nwant %s", b2, b1)
			}
		})
	}
}

// TestRetryThenDecide checks that the flag Retry sets is the one Decide
// consumes: the failed phase starts again.
func TestRetryThenDecide(t *testing.T) {
	st := inventory.MachineStatus{Phase: reconciler.FailedPrefix + reconciler.PhaseDeploying, Attempts: 3, Retry: true}
	m := &spec.Machine{Spec: spec.MachineSpec{Rack: "r1", State: spec.StateDeployed, Image: "debian", Erase: "none"}}
	m.Kind, m.Metadata.Name = spec.KindMachine, "m1"
	out := reconciler.Decide(reconciler.Input{Machine: m, Status: st}, reconciler.Policy{})
	if out.Status.Phase != reconciler.PhaseDeploying || out.Status.Retry {
		t.Fatalf("after retry: phase %q retry %v", out.Status.Phase, out.Status.Retry)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
