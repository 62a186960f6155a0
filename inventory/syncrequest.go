package inventory

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	retry "github.com/kilnhq/kiln/inventory/backoff"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// RequestSync asks the region leader's source to poll now: any server
// may write it, the leader watches it (WatchSyncRequests).
func (s *Store) RequestSync(ctx context.Context, source, by string, at time.Time) error {
	b, err := json.Marshal(SyncRequest{By: by, At: at.UTC()})
	if err != nil {
		return err
	}
	if _, err := s.cli.Put(ctx, s.keys.SyncRequest(source), string(b)); err != nil {
		return fmt.Errorf("request a sync of %s: %w", source, err)
	}
	return nil
}

// FollowSyncRequests calls fn for each sync request of source from now
// until ctx ends, watching again (with backoff) after etcd goes away: a
// request made while etcd was away could not be stored either.
func (s *Store) FollowSyncRequests(ctx context.Context, source string, fn func(SyncRequest)) {
	for attempt := 0; ctx.Err() == nil; attempt++ {
		err := s.WatchSyncRequests(ctx, source, fn)
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("sync requests: watch ended; watching again", "err", err)
		retry.Sleep(ctx, syncBackoff.Delay(attempt))
	}
}

// syncBackoff paces FollowSyncRequests' watches after errors.
var syncBackoff = retry.Policy{Base: 200 * time.Millisecond, Max: 5 * time.Second}

// WatchSyncRequests calls fn for each sync request of source after now,
// until ctx ends or the watch fails.
func (s *Store) WatchSyncRequests(ctx context.Context, source string, fn func(SyncRequest)) error {
	resp, err := s.cli.Get(ctx, s.keys.SyncRequest(source))
	if err != nil {
		return err
	}
	wc := s.cli.Watch(clientv3.WithRequireLeader(ctx), s.keys.SyncRequest(source), clientv3.WithRev(resp.Header.Revision+1))
	return EachEvent(ctx, wc, "sync requests", func(ev *clientv3.Event) {
		var r SyncRequest
		if ev.Type == clientv3.EventTypePut && json.Unmarshal(ev.Kv.Value, &r) == nil {
			fn(r)
		}
	})
}
