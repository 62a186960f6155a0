package inventory

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// WatchPrefix reports changes below prefix (a full key prefix, e.g.
// Keys().Lease(rack, "", "")) after revision rev.
func (s *Store) WatchPrefix(ctx context.Context, prefix string, rev int64) clientv3.WatchChan {
	return s.cli.Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
}

// WatchChanges reports every change below the prefix after revision rev
// until ctx ends. Readers re-read what they need on each notification.
func (s *Store) WatchChanges(ctx context.Context, rev int64) clientv3.WatchChan {
	return s.cli.Watch(clientv3.WithRequireLeader(ctx), s.keys.Prefix(), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
}

// EachEvent reads a watch until ctx ends or the watch closes, calling fn
// for every event; a watch error (compaction, etcd lost) ends it,
// wrapped with what was watched.
func EachEvent(ctx context.Context, wc clientv3.WatchChan, what string, fn func(*clientv3.Event)) error {
	return EachResponse(ctx, wc, what, func(events []*clientv3.Event) error {
		for _, ev := range events {
			fn(ev)
		}
		return nil
	})
}

// EachResponse is EachEvent a response at a time: fn gets the events of
// one watch response, and an error from fn ends the watch with it.
func EachResponse(ctx context.Context, wc clientv3.WatchChan, what string, fn func([]*clientv3.Event) error) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case resp, ok := <-wc:
			if !ok {
				return nil
			}
			if err := resp.Err(); err != nil {
				return fmt.Errorf("watch %s: %w", what, err)
			}
			if err := fn(resp.Events); err != nil {
				return err
			}
		}
	}
}
