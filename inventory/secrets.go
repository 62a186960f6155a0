package inventory

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sort"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/kilnhq/kiln/spec"
)

// BMCSecret is what keys.Secret(rack, machine) holds: a machine's
// plaintext BMC password, moved out of the desired state that every
// reader sees into a key only the region and that machine's rack read.
type BMCSecret struct {
	Password string `json:"password"`
}

// withoutSecret returns the object to store in the desired state: a
// Machine whose BMC password is plaintext becomes a copy whose password
// is only the FromSecret marker, and its secret is added to secrets (by
// full key). Other objects are returned as they are.
func (s *Store) withoutSecret(o spec.Object, secrets map[string][]byte) (spec.Object, error) {
	m, ok := o.(*spec.Machine)
	if !ok || m.Spec.BMC == nil || !m.Spec.BMC.Password.Plaintext() {
		return o, nil
	}
	b, err := json.Marshal(BMCSecret{Password: m.Spec.BMC.Password.Value})
	if err != nil {
		return nil, fmt.Errorf("encode the BMC secret of machine %s: %w", m.Metadata.Name, err)
	}
	secrets[s.keys.Secret(m.Spec.Rack, m.Metadata.Name)] = b
	c := *m
	bmc := *m.Spec.BMC
	bmc.Password = &spec.SecretRef{FromSecret: true}
	c.Spec.BMC = &bmc
	return &c, nil
}

// secretChanges compares the wanted secrets with the stored ones (have,
// as the last Apply of this store wrote them; read from etcd when nil):
// puts are the keys to write (new or changed), stale the keys no machine
// needs any more; n counts etcd requests.
func (s *Store) secretChanges(ctx context.Context, have, want map[string][]byte) (puts, stale []string, n int, err error) {
	if have == nil {
		resp, err := s.cli.Get(ctx, s.keys.Secret("", ""), clientv3.WithPrefix())
		if err != nil {
			return nil, nil, 1, fmt.Errorf("read BMC secrets: %w", err)
		}
		n = 1
		have = make(map[string][]byte, len(resp.Kvs))
		for _, kv := range resp.Kvs {
			have[string(kv.Key)] = kv.Value
		}
	}
	for k := range have {
		if _, ok := want[k]; !ok {
			stale = append(stale, k)
		}
	}
	for k, v := range want {
		if old, ok := have[k]; !ok || !bytes.Equal(old, v) {
			puts = append(puts, k)
		}
	}
	sort.Strings(puts)
	sort.Strings(stale)
	return puts, stale, n, nil
}

// deleteSecrets drops secrets no machine of the published revision
// needs; run after the pointer flipped, so that readers of the previous
// revision found theirs until then.
func (s *Store) deleteSecrets(ctx context.Context, stale []string) (int, error) {
	n := 0
	for len(stale) > 0 {
		chunk := stale[:min(len(stale), s.MaxOps)]
		stale = stale[len(chunk):]
		ops := make([]clientv3.Op, len(chunk))
		for i, k := range chunk {
			ops[i] = clientv3.OpDelete(k)
		}
		n++
		if _, err := s.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			return n, fmt.Errorf("delete stale BMC secrets: %w", err)
		}
	}
	return n, nil
}

// FillSecrets puts the plaintext BMC passwords of rack's machines (every
// rack's when rack is "") back into inv, in memory: for each machine
// whose password carries the FromSecret marker, its secret's value. A
// machine whose secret is missing keeps the marker (power actions on it
// then fail, saying so).
func (s *Store) FillSecrets(ctx context.Context, rack string, inv *spec.Inventory) error {
	resp, err := s.cli.Get(ctx, s.keys.Secret(rack, ""), clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("read the BMC secrets of rack %q: %w", rack, err)
	}
	l := s.keys
	for _, kv := range resp.Kvs {
		r, name, ok := l.SplitSecret(string(kv.Key))
		m := inv.Machines[name]
		if !ok || m == nil || m.Spec.Rack != r || m.Spec.BMC == nil || m.Spec.BMC.Password == nil || !m.Spec.BMC.Password.FromSecret {
			continue
		}
		var sec BMCSecret
		if err := json.Unmarshal(kv.Value, &sec); err != nil {
			return fmt.Errorf("decode the BMC secret of machine %s: %w", name, err)
		}
		m.Spec.BMC.Password.Value = sec.Password
	}
	return nil
}
