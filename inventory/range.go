package inventory

import (
	"context"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// RangeAt calls fn for every key below prefix at revision rev (0: now)
// and returns the revision read.
func (s *Store) RangeAt(ctx context.Context, prefix string, rev int64, fn func(key string, value []byte) error) (int64, error) {
	return s.RangeRevs(ctx, prefix, rev, func(k string, v []byte, _ int64) error { return fn(k, v) })
}

// RangeRevs is RangeAt that also passes each key's ModRevision, for
// callers that write back with a compare on it.
func (s *Store) RangeRevs(ctx context.Context, prefix string, rev int64, fn func(key string, value []byte, modRev int64) error) (int64, error) {
	if rev == 0 {
		resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return 0, err
		}
		rev = resp.Header.Revision
	}
	_, err := s.rangeKVs(ctx, prefix, rev, func(kv *mvccpb.KeyValue) error {
		return fn(string(kv.Key), kv.Value, kv.ModRevision)
	})
	return rev, err
}

// rangeAll calls fn for every key under prefix at revision rev, reading in
// pages. It returns the number of requests made.
func (s *Store) rangeAll(ctx context.Context, prefix string, rev int64, fn func(k, v []byte) error) (int, error) {
	return s.rangeKVs(ctx, prefix, rev, func(kv *mvccpb.KeyValue) error { return fn(kv.Key, kv.Value) })
}

// rangeKVs pages through every key below prefix at revision rev (0: now).
func (s *Store) rangeKVs(ctx context.Context, prefix string, rev int64, fn func(kv *mvccpb.KeyValue) error) (int, error) {
	key, end := prefix, clientv3.GetPrefixRangeEnd(prefix)
	requests := 0
	for {
		resp, err := s.cli.Get(ctx, key, clientv3.WithRange(end), clientv3.WithRev(rev), clientv3.WithLimit(5000))
		requests++
		if err != nil {
			return requests, err
		}
		for _, kv := range resp.Kvs {
			if err := fn(kv); err != nil {
				return requests, err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return requests, nil
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}
