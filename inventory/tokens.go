package inventory

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Keys of the boot stage (see package keys):
//
//	tokens/<rack>/<machine>    the machine's boot-token record (hashes only)

// Boot-token record states.
const (
	// TokenPending: the rack ran a netboot power task and the boot's
	// first script fetch may mint the token.
	TokenPending = "pending"
	// TokenIssued: the token was handed out once; no later fetch gets it.
	TokenIssued = "issued"
)

// BootToken is the record of one network-boot task's token: never the
// token itself, only its SHA-256. The rack writes it "pending" before
// it powers the machine for a netboot task; the boot's first script
// fetch mints the token (compare-and-swap) and binds it to an address.
type BootToken struct {
	State   string `json:"state,omitempty"`   // TokenPending, TokenIssued
	TaskID  string `json:"taskID,omitempty"`  // the netboot power task this boot belongs to
	Purpose string `json:"purpose,omitempty"` // the task's boot purpose
	// Address is the only address the token is accepted from: the
	// machine's DHCP lease, or in proxyDHCP mode the first fetcher's.
	Address  string    `json:"address,omitempty"`
	SHA256   string    `json:"sha256,omitempty"` // lower-case hex SHA-256 of the token
	Expires  time.Time `json:"expires,omitzero"`
	IssuedAt time.Time `json:"issuedAt,omitzero"`
	BootID   string    `json:"bootID,omitempty"`
	// OSSHA256 is the SHA-256 of the deployed OS's report-in token, minted
	// when the deploy's vendor-data is served and used once. It dies with
	// the boot token: the next network boot replaces the whole record.
	OSSHA256  string    `json:"osSHA256,omitempty"`
	OSExpires time.Time `json:"osExpires,omitzero"`
}

// Tokens stores one rack's boot tokens in etcd; the boot server's
// TokenStore.
type Tokens struct {
	s    *Store
	rack string
}

// Tokens returns the boot token store of rack.
func (s *Store) Tokens(rack string) *Tokens { return &Tokens{s: s, rack: rack} }

// Put replaces the machine's boot-token record.
func (t *Tokens) Put(ctx context.Context, machine string, tok BootToken) error {
	return t.PutLeased(ctx, machine, tok, clientv3.NoLease)
}

// PutLeased replaces the machine's boot-token record, attached to an etcd
// lease (discovered MACs' records expire with it); NoLease for none.
func (t *Tokens) PutLeased(ctx context.Context, machine string, tok BootToken, lease clientv3.LeaseID) error {
	b, err := json.Marshal(tok)
	if err != nil {
		return err
	}
	if _, err := t.s.cli.Put(ctx, t.s.keys.Token(t.rack, machine), string(b), withLease(lease)...); err != nil {
		return fmt.Errorf("store boot token of %s: %w", machine, err)
	}
	return nil
}

// Update changes the machine's boot-token record with fn,
// compare-and-swap, so that a record written meanwhile (a new task, a
// concurrent script fetch) is never overwritten. ErrNotFound when there
// is none. An error of fn is returned as is and nothing is written. The
// record keeps its lease.
func (t *Tokens) Update(ctx context.Context, machine string, fn func(*BootToken) error) error {
	key := t.s.keys.Token(t.rack, machine)
	for {
		resp, err := t.s.cli.Get(ctx, key)
		if err != nil {
			return fmt.Errorf("read boot token of %s: %w", machine, err)
		}
		if len(resp.Kvs) == 0 {
			return fmt.Errorf("boot token of %s: %w", machine, ErrNotFound)
		}
		kv := resp.Kvs[0]
		var tok BootToken
		if err := json.Unmarshal(kv.Value, &tok); err != nil {
			return fmt.Errorf("decode boot token of %s: %w", machine, err)
		}
		if err := fn(&tok); err != nil {
			return err
		}
		b, err := json.Marshal(tok)
		if err != nil {
			return err
		}
		tr, err := t.s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).
			Then(clientv3.OpPut(key, string(b), withLease(clientv3.LeaseID(kv.Lease))...)).Commit()
		if err != nil {
			return fmt.Errorf("update boot token of %s: %w", machine, err)
		}
		if tr.Succeeded {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("update boot token of %s: %w", machine, err)
		}
	}
}

// Get reads the machine's boot-token record; ErrNotFound when none.
func (t *Tokens) Get(ctx context.Context, machine string) (BootToken, error) {
	tok, err := GetJSON[BootToken](ctx, t.s, t.s.keys.Token(t.rack, machine))
	if err != nil {
		return BootToken{}, fmt.Errorf("boot token of %s: %w", machine, err)
	}
	return tok, nil
}
