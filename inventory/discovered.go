package inventory

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Discovered is an unknown MAC that network-booted on a rack's subnet.
type Discovered struct {
	MAC         string    `json:"mac"`
	Rack        string    `json:"rack"`
	Subnet      string    `json:"subnet,omitempty"`
	IP          string    `json:"ip,omitempty"`
	FirstSeen   time.Time `json:"firstSeen"`
	LastSeen    time.Time `json:"lastSeen"`
	Arch        string    `json:"arch,omitempty"`
	VendorClass string    `json:"vendorClass,omitempty"`
	CircuitID   string    `json:"circuitID,omitempty"`
	Relay       string    `json:"relay,omitempty"`
}

// PutDiscovered records a rack's discovered MACs, each on its lease (a
// record without one, NoLease, is kept until deleted), in transactions
// within etcd's limits.
func (s *Store) PutDiscovered(ctx context.Context, ds []Discovered, leases map[string]clientv3.LeaseID) error {
	var ops []clientv3.Op
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		_, err := s.cli.Txn(ctx).Then(ops...).Commit()
		ops = ops[:0]
		return err
	}
	for _, d := range ds {
		if d.Rack == "" || d.MAC == "" {
			return fmt.Errorf("record discovered MAC %q: rack and MAC are required", d.MAC)
		}
		b, err := json.Marshal(d)
		if err != nil {
			return err
		}
		ops = append(ops, clientv3.OpPut(s.keys.Discovered(d.Rack, d.MAC), string(b), withLease(leases[d.MAC])...))
		if len(ops) == defaultMaxOps {
			if err := flush(); err != nil {
				return fmt.Errorf("record discovered MACs: %w", err)
			}
		}
	}
	if err := flush(); err != nil {
		return fmt.Errorf("record discovered MACs: %w", err)
	}
	return nil
}

// ListDiscovered reads every rack's discovered MACs.
func (s *Store) ListDiscovered(ctx context.Context) ([]Discovered, error) {
	return ListJSON[Discovered](ctx, s, s.keys.Discovered("", ""))
}
