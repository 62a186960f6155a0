package inventory

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Roles of a region API token: what its holder may do (docs/api.md).
const (
	RoleViewer       = "viewer"       // reads
	RoleOperator     = "operator"     // reads, retries, syncs, powers
	RoleOrchestrator = "orchestrator" // the allocation API to come; for now an operator's rights
)

// Roles lists every role, least rights first.
var Roles = []string{RoleViewer, RoleOperator, RoleOrchestrator}

// RoleAllows reports whether a token of role has the rights of want.
func RoleAllows(role, want string) bool {
	rank := func(r string) int {
		switch r {
		case RoleViewer:
			return 1
		case RoleOperator, RoleOrchestrator:
			return 2
		}
		return 0
	}
	return rank(role) > 0 && rank(role) >= rank(want)
}

// APIToken is the record of one region API token: its hash, never the
// token itself, which is shown once when created.
type APIToken struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Role      string    `json:"role"`
	SHA256    string    `json:"sha256"` // hex SHA-256 of the whole token
	CreatedAt time.Time `json:"createdAt"`
	Expires   time.Time `json:"expires,omitzero"` // zero: never
	RevokedAt time.Time `json:"revokedAt,omitzero"`
}

// Valid reports whether the record still admits its token at now, and
// why not.
func (t APIToken) Valid(now time.Time) error {
	switch {
	case !t.RevokedAt.IsZero():
		return fmt.Errorf("token %s was revoked at %s", t.Name, t.RevokedAt.Format(time.RFC3339))
	case !t.Expires.IsZero() && !now.Before(t.Expires):
		return fmt.Errorf("token %s expired at %s", t.Name, t.Expires.Format(time.RFC3339))
	}
	return nil
}

// Matches reports, in constant time, whether token hashes to the record's
// hash.
func (t APIToken) Matches(token string) bool {
	sum := sha256.Sum256([]byte(token))
	want, err := hex.DecodeString(t.SHA256)
	return err == nil && subtle.ConstantTimeCompare(sum[:], want) == 1
}

// API tokens read kiln_<id>_<secret>: the ID finds the record, the whole
// token is checked against its hash.
const apiTokenPrefix = "kiln_"

var tokenEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// APITokenID is the ID part of a token, or "" when it is not shaped as
// one (then no record is looked up).
func APITokenID(token string) string {
	rest, ok := strings.CutPrefix(token, apiTokenPrefix)
	id, secret, ok2 := strings.Cut(rest, "_")
	if !ok || !ok2 || len(id) != 16 || len(secret) != 48 || strings.ContainsFunc(id+secret, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= '2' && r <= '7')
	}) {
		return ""
	}
	return id
}

// MaxAPITokenName bounds a token's name, which events and logs carry.
const MaxAPITokenName = 63

// CheckAPITokenName says what is wrong with a token name: it must be
// 1-63 of a-z, 0-9, '-', '.', '_' and '@' (a person or a program).
func CheckAPITokenName(name string) error {
	if name == "" || len(name) > MaxAPITokenName || strings.ContainsFunc(name, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_' || r == '@')
	}) {
		return fmt.Errorf("token name %q: want 1 to %d of a-z, 0-9, '-', '.', '_', '@'", name, MaxAPITokenName)
	}
	return nil
}

// CreateAPIToken mints a token of role named name, valid for ttl (0:
// until revoked), stores its record and returns the token: the only
// time it is seen. Names are unique among tokens not revoked.
func (s *Store) CreateAPIToken(ctx context.Context, name, role string, ttl time.Duration, now time.Time) (string, APIToken, error) {
	if err := CheckAPITokenName(name); err != nil {
		return "", APIToken{}, err
	}
	if !slices.Contains(Roles, role) {
		return "", APIToken{}, fmt.Errorf("role %q: want one of %s", role, strings.Join(Roles, ", "))
	}
	if ttl < 0 {
		return "", APIToken{}, fmt.Errorf("expiry %s: want a positive duration, or 0 for none", ttl)
	}
	have, err := s.APITokens(ctx)
	if err != nil {
		return "", APIToken{}, err
	}
	for _, t := range have {
		if t.Name == name && t.RevokedAt.IsZero() {
			return "", APIToken{}, fmt.Errorf("a token named %s exists (revoke it first, or choose another name)", name)
		}
	}
	var raw [40]byte // 80 bits of ID, 240 of secret
	rand.Read(raw[:])
	enc := strings.ToLower(tokenEncoding.EncodeToString(raw[:]))
	id := enc[:16]
	token := apiTokenPrefix + id + "_" + enc[16:]
	sum := sha256.Sum256([]byte(token))
	rec := APIToken{ID: id, Name: name, Role: role, SHA256: hex.EncodeToString(sum[:]), CreatedAt: now.UTC()}
	if ttl > 0 {
		rec.Expires = now.Add(ttl).UTC()
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return "", APIToken{}, err
	}
	key := s.keys.APIToken(id)
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).Then(clientv3.OpPut(key, string(b))).Commit()
	if err != nil {
		return "", APIToken{}, fmt.Errorf("store token %s: %w", name, err)
	}
	if !resp.Succeeded {
		return "", APIToken{}, errors.New("token ID collision; try again")
	}
	return token, rec, nil
}

// APITokens reads every token record, in creation order.
func (s *Store) APITokens(ctx context.Context) ([]APIToken, error) {
	var out []APIToken
	_, err := s.rangeAll(ctx, s.keys.APIToken(""), 0, func(k, v []byte) error {
		var t APIToken
		if err := json.Unmarshal(v, &t); err != nil {
			return fmt.Errorf("decode %s: %w", k, err)
		}
		out = append(out, t)
		return nil
	})
	slices.SortFunc(out, func(a, b APIToken) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return out, err
}

// RevokeAPIToken marks the token with the given name or ID revoked; every
// API server watching the records refuses it from then on.
func (s *Store) RevokeAPIToken(ctx context.Context, nameOrID string, now time.Time) (APIToken, error) {
	have, err := s.APITokens(ctx)
	if err != nil {
		return APIToken{}, err
	}
	for _, t := range have {
		if (t.Name == nameOrID || t.ID == nameOrID) && t.RevokedAt.IsZero() {
			var out APIToken
			err := s.Update(ctx, s.keys.APIToken(t.ID), func(old []byte) ([]byte, error) {
				if old == nil {
					return nil, ErrNotFound
				}
				if err := json.Unmarshal(old, &out); err != nil {
					return nil, err
				}
				out.RevokedAt = now.UTC()
				return json.Marshal(out)
			})
			return out, err
		}
	}
	return APIToken{}, fmt.Errorf("no live token named %s: %w", nameOrID, ErrNotFound)
}
