package inventory

import (
	"context"
	"fmt"
	"time"
)

// Keys of the boot stage:
//
//	tokens/<machine>           the machine's current boot token (its SHA-256 only)

// TokenKey is where a machine's current boot token lives.
func (s *Store) TokenKey(machine string) string { return s.prefix + "tokens/" + machine }

// BootToken is what is stored of the token handed to a machine at boot:
// never the token itself, only its SHA-256. Each boot replaces it.
type BootToken struct {
	SHA256   string    `json:"sha256"` // lower-case hex SHA-256 of the token
	Expires  time.Time `json:"expires"`
	IssuedAt time.Time `json:"issuedAt"`
	BootID   string    `json:"bootID"`
	// OSSHA256 is the SHA-256 of the deployed OS's report-in token, minted
	// when the deploy's vendor-data is served and used once. It dies with
	// the boot token: the next network boot replaces the whole record.
	OSSHA256  string    `json:"osSHA256,omitempty"`
	OSExpires time.Time `json:"osExpires,omitzero"`
}

// Tokens stores boot tokens in etcd; the boot server's TokenStore.
type Tokens struct{ s *Store }

// Tokens returns the store's boot token store.
func (s *Store) Tokens() *Tokens { return &Tokens{s: s} }

// Put replaces the machine's boot token.
func (t *Tokens) Put(ctx context.Context, machine string, tok BootToken) error {
	err := UpdateJSON(ctx, t.s, t.s.TokenKey(machine), func(v *BootToken) error {
		*v = tok
		return nil
	})
	if err != nil {
		return fmt.Errorf("store boot token of %s: %w", machine, err)
	}
	return nil
}

// Update changes the machine's boot token with fn, compare-and-swap, so
// that a boot token issued meanwhile is never overwritten with an older
// one. ErrNotFound when none was issued.
func (t *Tokens) Update(ctx context.Context, machine string, fn func(*BootToken) error) error {
	if _, err := t.Get(ctx, machine); err != nil {
		return err
	}
	if err := UpdateJSON(ctx, t.s, t.s.TokenKey(machine), fn); err != nil {
		return fmt.Errorf("update boot token of %s: %w", machine, err)
	}
	return nil
}

// Get reads the machine's boot token; ErrNotFound when none was issued.
func (t *Tokens) Get(ctx context.Context, machine string) (BootToken, error) {
	tok, err := GetJSON[BootToken](ctx, t.s, t.s.TokenKey(machine))
	if err != nil {
		return BootToken{}, fmt.Errorf("boot token of %s: %w", machine, err)
	}
	return tok, nil
}
