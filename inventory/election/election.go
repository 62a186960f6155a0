package election

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/backoff"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// ErrLost is the cause of a term's context when leadership was lost
// (the session expired or the leader key was deleted), as opposed to Run's
// context ending.
var ErrLost = errors.New("leadership lost")

// Defaults of Options.
const (
	DefaultTTL           = 2 * time.Second
	DefaultResignTimeout = time.Second
)

// DefaultBackoff is the wait between failed campaigns or terms that ended
// in an error: 200ms doubling to 6.4s, jittered.
var DefaultBackoff = backoff.Policy{Base: 200 * time.Millisecond, Max: 6400 * time.Millisecond}

// Options tune Run; zero values take the defaults.
type Options struct {
	// TTL is the session's TTL, rounded to whole seconds (at least 1s):
	// a dead leader is replaced within about this long.
	TTL time.Duration
	// Backoff spaces campaigns after a failure.
	Backoff backoff.Policy
	// ResignTimeout bounds resigning and revoking the session on the way
	// out; past it the key expires with the session's TTL.
	ResignTimeout time.Duration
	// Log receives "leadership term ended" and "stepping down".
	Log *slog.Logger
}

func (o *Options) defaults() {
	if o.TTL <= 0 {
		o.TTL = DefaultTTL
	}
	if o.Backoff == (backoff.Policy{}) {
		o.Backoff = DefaultBackoff
	}
	if o.ResignTimeout <= 0 {
		o.ResignTimeout = DefaultResignTimeout
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
}

// Term is one term of leadership: the leader key this campaign created
// and its create revision.
type Term struct {
	Key string
	Rev int64
}

// Fence is the term's write fence: a transaction comparing it succeeds
// only while this term's key is still the one that won.
func (t Term) Fence() inventory.Fence { return inventory.Fence{Key: t.Key, Rev: t.Rev} }

// Run campaigns under prefix as id and calls lead for each term won, until
// ctx ends; it then returns nil. lead's context ends when ctx ends or the
// leadership is lost (its cause is then ErrLost). When lead returns an
// error, or a campaign fails, Run waits a jittered backoff before it
// campaigns again; after a clean return or a lost term it campaigns at
// once.
func Run(ctx context.Context, cli *clientv3.Client, prefix, id string, o Options, lead func(context.Context, Term) error) error {
	o.defaults()
	for attempt := 0; ctx.Err() == nil; {
		err := term(ctx, cli, prefix, id, o, lead)
		if ctx.Err() != nil {
			break
		}
		if err == nil {
			attempt = 0
			continue
		}
		o.Log.Warn("leadership term ended", "err", err)
		backoff.Sleep(ctx, o.Backoff.Delay(attempt))
		attempt++
	}
	return nil
}

// term is one campaign and, if won, one term of lead.
func term(ctx context.Context, cli *clientv3.Client, prefix, id string, o Options, lead func(context.Context, Term) error) error {
	ttl := max(int(o.TTL.Round(time.Second)/time.Second), 1)
	session, err := concurrency.NewSession(cli, concurrency.WithTTL(ttl), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("election session: %w", err)
	}
	defer session.Orphan()
	el := concurrency.NewElection(session, prefix)
	if err := el.Campaign(ctx, id); err != nil {
		release(ctx, cli, nil, session, o)
		return fmt.Errorf("campaign: %w", err)
	}
	t := Term{Key: el.Key(), Rev: el.Rev()}
	lctx, lose := context.WithCancelCause(ctx)
	defer lose(nil)
	go watchLoss(lctx, lose, cli, session, t)

	err = lead(lctx, t)
	if cause := context.Cause(lctx); ctx.Err() == nil && errors.Is(cause, ErrLost) {
		// Our key is gone (or about to be): nothing to resign.
		o.Log.Warn("stepping down", "reason", cause)
		return nil
	}
	release(ctx, cli, el, session, o)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// watchLoss ends the term (lose with ErrLost) when the session closes or
// the leader key is deleted, and returns when ctx ends.
func watchLoss(ctx context.Context, lose context.CancelCauseFunc, cli *clientv3.Client, s *concurrency.Session, t Term) {
	wch := cli.Watch(ctx, t.Key, clientv3.WithRev(t.Rev+1))
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.Done():
			lose(fmt.Errorf("%w: election session lost", ErrLost))
			return
		case wr, ok := <-wch:
			if !ok || wr.Err() != nil {
				wch = nil // the session still guards the term
				continue
			}
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypeDelete {
					lose(fmt.Errorf("%w: leader key %s deleted", ErrLost, t.Key))
					return
				}
			}
		}
	}
}

// release resigns (when el is set) and revokes the session's lease within
// o.ResignTimeout, even after ctx ended, so a standby need not wait for
// the TTL.
func release(ctx context.Context, cli *clientv3.Client, el *concurrency.Election, s *concurrency.Session, o Options) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.ResignTimeout)
	defer cancel()
	if el != nil {
		if err := el.Resign(rctx); err != nil {
			o.Log.Debug("resign", "err", err) // the revoke below deletes the key too
		}
	}
	s.Orphan()
	if _, err := cli.Revoke(rctx, s.Lease()); err != nil {
		o.Log.Debug("revoke the election session", "err", err)
	}
}
