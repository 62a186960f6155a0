package inventory

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrFenceLost is returned by a fenced write whose leader was deposed.
var ErrFenceLost = errors.New("leadership lost: the write was not made")

// PowerObservation is what a rack's power watch last saw of one of its
// machines through its BMC. The rack records it; only the region turns
// it into the machine's status (docs/security.md: statuses are the
// region's to write).
type PowerObservation struct {
	Rack  string `json:"rack"`
	State string `json:"state"` // on, off, unknown
	// Error is the poll's error, bounded and with the BMC password
	// removed; State is unknown then.
	Error      string    `json:"error,omitempty"`
	ObservedAt time.Time `json:"observedAt"`
	Agent      string    `json:"agent,omitempty"` // the rack agent that polled
}

// PutPowerState records a machine's observed power state, fenced by the
// rack leader's election key (ErrFenceLost when it no longer leads).
func (s *Store) PutPowerState(ctx context.Context, f Fence, machine string, o PowerObservation) error {
	if o.Rack == "" {
		return fmt.Errorf("power state of %s: no rack", machine)
	}
	b, err := json.Marshal(o)
	if err != nil {
		return fmt.Errorf("encode power state of %s: %w", machine, err)
	}
	resp, err := s.cli.Txn(ctx).If(f.Held()).Then(clientv3.OpPut(s.keys.PowerState(o.Rack, machine), string(b))).Commit()
	if err != nil {
		return fmt.Errorf("record power state of %s: %w", machine, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("record power state of %s: %w", machine, ErrFenceLost)
	}
	return nil
}

// DecodePowerState reads a value stored by PutPowerState.
func DecodePowerState(v []byte) (PowerObservation, error) {
	var o PowerObservation
	if err := json.Unmarshal(v, &o); err != nil {
		return o, fmt.Errorf("decode power state: %w", err)
	}
	return o, nil
}
