package inventory

import (
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Fence is a leader's election key: a write that compares it succeeds
// only while that leader's key is the one that won (a fencing token).
type Fence struct {
	Key string
	Rev int64 // the key's CreateRevision
}

// Held is the compare that makes a transaction fenced.
func (f Fence) Held() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(f.Key), "=", f.Rev)
}

// HeldIn reports whether a Get of the fence key (a transaction's Else)
// shows the fence still held: false means the leader was deposed.
func (f Fence) HeldIn(get *etcdserverpb.RangeResponse) bool {
	return get != nil && len(get.Kvs) > 0 && get.Kvs[0].CreateRevision == f.Rev
}
