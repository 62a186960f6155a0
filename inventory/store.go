package inventory

import (
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/kilnhq/kiln/inventory/keys"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultPrefix is where Kiln keeps its keys.
const DefaultPrefix = keys.DefaultPrefix

// Sentinel errors.
var (
	ErrNotFound = errors.New("not found")
	// ErrConflict means another writer changed the data first; read again
	// and retry.
	ErrConflict = errors.New("changed concurrently")
	// ErrTooLarge means an object can't be stored in one etcd request;
	// retrying does not help.
	ErrTooLarge = errors.New("object too large for etcd")
)

// etcd's default limits: 128 operations per transaction and 1.5 MiB per
// request. Stay below them so any cluster accepts Kiln's writes.
const (
	defaultMaxOps   = 128
	defaultMaxBytes = 1 << 20
)

// Store reads and writes Kiln's state in etcd.
type Store struct {
	cli  *clientv3.Client
	keys keys.Layout
	log  *slog.Logger

	// MaxOps and MaxBytes bound one transaction; Parallel bounds the
	// chunk writes in flight while a new generation is written.
	MaxOps, MaxBytes, Parallel int

	mu      sync.Mutex
	applied *appliedState // what the last Apply left in etcd
}

// NewStore returns a store using keys under prefix (DefaultPrefix if "").
func NewStore(cli *clientv3.Client, prefix string, log *slog.Logger) *Store {
	return &Store{cli: cli, keys: keys.New(prefix), log: log, MaxOps: defaultMaxOps, MaxBytes: defaultMaxBytes, Parallel: 4}
}

// Keys is the store's key layout.
func (s *Store) Keys() keys.Layout { return s.keys }

// Client returns the etcd client.
func (s *Store) Client() *clientv3.Client { return s.cli }

// withLease is the put option that attaches a key to lease, none for
// NoLease (the key then lives until deleted).
func withLease(lease clientv3.LeaseID) []clientv3.OpOption {
	if lease == clientv3.NoLease {
		return nil
	}
	return []clientv3.OpOption{clientv3.WithLease(lease)}
}

// Pointer names the generation that holds the applied source revision.
type Pointer struct {
	Generation string         `json:"generation"`
	Previous   string         `json:"previous,omitempty"`
	Source     string         `json:"source"`
	Revision   string         `json:"revision"`
	Digest     string         `json:"digest,omitempty"`
	AppliedAt  time.Time      `json:"appliedAt"`
	Counts     map[string]int `json:"counts"`
}

// KindUnmanaged is the pseudo-kind of the Unmanaged markers: it selects
// them in Snapshot and counts them in a Pointer's Counts.
const KindUnmanaged = "Unmanaged"

// Unmanaged marks a machine that was removed from the source. Kiln leaves
// such a machine as it is: nothing is powered off or wiped.
type Unmanaged struct {
	Name      string    `json:"name"`
	RemovedIn string    `json:"removedIn"`
	RemovedAt time.Time `json:"removedAt"`
}
