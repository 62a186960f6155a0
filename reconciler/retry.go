package reconciler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/keys"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrNotFailed is returned by Retry for a machine whose phase is not a
// failed one: there is nothing to retry.
var ErrNotFailed = errors.New("not failed")

// StatusUpdater is the part of inventory.Store that Retry needs: a
// compare-and-swap on a machine's status.
type StatusUpdater interface {
	Keys() keys.Layout
	Update(ctx context.Context, key string, fn func(old []byte) ([]byte, error), opts ...clientv3.OpOption) error
}

// Retry asks the region leader to try a failed machine's phase again
// (kiln retry): it sets the status's retry flag, which Decide consumes in
// a failed-<phase>, and changes no other field, since every other field is
// the leader's. The write is a compare-and-swap: if the status changed
// meanwhile (the leader retried on its own, say), the rule is checked
// again on the new status. It returns the phase the machine was in:
// failed-<phase> on success. A machine without status gives an error
// wrapping inventory.ErrNotFound; one that is not failed, ErrNotFailed.
func Retry(ctx context.Context, store StatusUpdater, machine string) (from string, err error) {
	return setStatusField(ctx, store, machine, "retry", true, func(st inventory.MachineStatus) error {
		if !strings.HasPrefix(st.Phase, FailedPrefix) {
			return fmt.Errorf("%s is %q: %w", machine, st.Phase, ErrNotFailed)
		}
		return nil
	})
}

// setStatusField sets one field of the machine's status to value by
// compare-and-swap, touching no other (every other field is the region
// leader's), when check allows it on the status as it is; it returns the
// phase the status was in. No status is inventory.ErrNotFound.
func setStatusField(ctx context.Context, store StatusUpdater, machine, field string, value any, check func(inventory.MachineStatus) error) (phase string, err error) {
	v, err := json.Marshal(value)
	if err != nil {
		return "", err
	}
	err = store.Update(ctx, store.Keys().MachineStatus(machine), func(old []byte) ([]byte, error) {
		phase = ""
		if old == nil {
			return nil, fmt.Errorf("machine %q has no status: %w", machine, inventory.ErrNotFound)
		}
		var st inventory.MachineStatus
		var raw map[string]json.RawMessage
		if err := json.Unmarshal(old, &st); err != nil {
			return nil, fmt.Errorf("decode status of %s: %w", machine, err)
		}
		if err := json.Unmarshal(old, &raw); err != nil {
			return nil, fmt.Errorf("decode status of %s: %w", machine, err)
		}
		phase = st.Phase
		if err := check(st); err != nil {
			return nil, err
		}
		raw[field] = v
		return json.Marshal(raw)
	})
	return phase, err
}
