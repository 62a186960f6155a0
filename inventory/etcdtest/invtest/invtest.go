package invtest

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"testing/fstest"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/etcd"
	"github.com/kilnhq/kiln/inventory/etcdtest"
	"github.com/kilnhq/kiln/spec"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Meta is what Apply records as the applied source and revision.
var Meta = inventory.ApplyMeta{Source: "test", Revision: "r1"}

// Load parses doc (YAML documents, as in one inventory file), failing
// the test if it has an error.
func Load(t testing.TB, doc string) *spec.Inventory {
	t.Helper()
	res := spec.Load(fstest.MapFS{"inv.yaml": {Data: []byte(doc)}})
	if res.Problems.Errors() > 0 {
		t.Fatalf("test inventory is not valid:\n%s", res.Problems)
	}
	return res.Inventory
}

// Apply applies inv to etcd through a store on cli (no key prefix,
// logging discarded) as Meta, and returns the store.
func Apply(t testing.TB, cli *clientv3.Client, inv *spec.Inventory) *inventory.Store {
	t.Helper()
	store := inventory.NewStore(cli, "", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if _, err := store.Apply(context.Background(), inv, Meta); err != nil {
		t.Fatalf("apply the test inventory: %v", err)
	}
	return store
}

// Start starts an embedded etcd (etcdtest.Start) and applies the
// inventory of doc to it.
func Start(t testing.TB, doc string) (*inventory.Store, *clientv3.Client, etcd.Config) {
	t.Helper()
	cli, cfg := etcdtest.Start(t)
	return Apply(t, cli, Load(t, doc)), cli, cfg
}
