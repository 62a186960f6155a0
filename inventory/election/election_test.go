package election

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

const prefix = "/test/election/"

// candidate runs Run in the background and reports each term it wins.
type candidate struct {
	terms chan Term
	ended chan error // the cause of each term's end
	stop  context.CancelFunc
	done  chan struct{}
}

func campaign(t *testing.T, cli *clientv3.Client, id string, lead func(context.Context, Term) error) *candidate {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &candidate{terms: make(chan Term, 8), ended: make(chan error, 8), stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		if err := Run(ctx, cli, prefix, id, Options{TTL: time.Second}, func(lctx context.Context, term Term) error {
			c.terms <- term
			err := lead(lctx, term)
			c.ended <- context.Cause(lctx)
			return err
		}); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-c.done })
	return c
}

func waitTerm(t *testing.T, c *candidate) Term {
	t.Helper()
	select {
	case term := <-c.terms:
		return term
	case <-time.After(10 * time.Second):
		t.Fatal("no term won within 10s")
		return Term{}
	}
}

// waitLost waits for c's term to end with ErrLost after what happened.
func waitLost(t *testing.T, c *candidate, after string) {
	t.Helper()
	select {
	case cause := <-c.ended:
		if !errors.Is(cause, ErrLost) {
			t.Errorf("term ended with %v after %s, want ErrLost", cause, after)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the term did not end after %s", after)
	}
}

func untilDone(ctx context.Context, _ Term) error { <-ctx.Done(); return nil }

// TestStandbyTakesOverOnResign: when the leader's Run ends, it resigns and
// the standby leads at once, without waiting for the session TTL; Run
// returns promptly.
func TestStandbyTakesOverOnResign(t *testing.T) {
	cli, _ := etcdtest.Start(t)
	a := campaign(t, cli, "a", untilDone)
	ta := waitTerm(t, a)
	b := campaign(t, cli, "b", untilDone)

	// The fence holds for the leader only.
	resp, err := cli.Txn(context.Background()).If(ta.Fence().Held()).Commit()
	if err != nil || !resp.Succeeded {
		t.Fatalf("leader's fence does not hold: %v %v", resp, err)
	}
	start := time.Now()
	a.stop()
	<-a.done
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Run took %s to return after cancel", d)
	}
	if cause := <-a.ended; !errors.Is(cause, context.Canceled) {
		t.Errorf("a's term ended with %v, want context.Canceled", cause)
	}
	tb := waitTerm(t, b)
	if d := time.Since(start); d > time.Second {
		t.Errorf("standby took %s to take over: resign did not free the key", d)
	}
	resp, err = cli.Txn(context.Background()).If(ta.Fence().Held()).Commit()
	if err != nil || resp.Succeeded {
		t.Fatalf("a deposed leader's fence still holds: %v %v", resp, err)
	}
	if tb.Key == ta.Key {
		t.Errorf("both terms share key %s", tb.Key)
	}
}

// TestLeadErrorHandsOver: a term whose lead fails resigns, the standby
// takes over, and the failed candidate campaigns again (after a backoff)
// behind it.
func TestLeadErrorHandsOver(t *testing.T) {
	cli, _ := etcdtest.Start(t)
	fail := make(chan struct{})
	a := campaign(t, cli, "a", func(ctx context.Context, _ Term) error {
		select {
		case <-fail:
			return errors.New("a server died")
		case <-ctx.Done():
			return nil
		}
	})
	waitTerm(t, a)
	b := campaign(t, cli, "b", untilDone)
	close(fail)
	waitTerm(t, b)
	b.stop()
	<-b.done
	waitTerm(t, a) // a campaigned again and wins once b is gone
}

// TestDeletedKeyEndsTerm: deleting the leader key ends the term with
// ErrLost, and the candidate campaigns anew.
func TestDeletedKeyEndsTerm(t *testing.T) {
	cli, _ := etcdtest.Start(t)
	a := campaign(t, cli, "a", untilDone)
	term := waitTerm(t, a)
	if _, err := cli.Delete(context.Background(), term.Key); err != nil {
		t.Fatal(err)
	}
	waitLost(t, a, "its key was deleted")
	if next := waitTerm(t, a); next.Key == term.Key && next.Rev == term.Rev {
		t.Errorf("the new term reuses the deleted one: %+v", next)
	}
}

// TestLostSessionEndsTerm: revoking the session's lease (as its expiry
// would) ends the term with ErrLost.
func TestLostSessionEndsTerm(t *testing.T) {
	cli, _ := etcdtest.Start(t)
	a := campaign(t, cli, "a", untilDone)
	term := waitTerm(t, a)
	resp, err := cli.Get(context.Background(), term.Key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("leader key: %v %v", resp, err)
	}
	if _, err := cli.Revoke(context.Background(), clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	waitLost(t, a, "its session was revoked")
}
