package inventory_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/etcdtest"
)

// A sync request written by any server reaches the follower; the
// follower ends with its context.
func TestFollowSyncRequests(t *testing.T) {
	cli, _ := etcdtest.Start(t)
	store := inventory.NewStore(cli, "", slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan inventory.SyncRequest, 1)
	done := make(chan struct{})
	ready := make(chan struct{})
	go func() {
		defer close(done)
		close(ready)
		store.FollowSyncRequests(ctx, "default", func(r inventory.SyncRequest) { got <- r })
	}()
	<-ready
	// The follower may not watch yet: ask until it hears one.
	deadline := time.After(10 * time.Second)
	for heard := false; !heard; {
		if err := store.RequestSync(context.Background(), "default", "hook", time.Now()); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-got:
			if r.By != "hook" {
				t.Fatalf("request %+v", r)
			}
			heard = true
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatal("no request heard within 10 s")
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the follower did not end with its context")
	}
}
