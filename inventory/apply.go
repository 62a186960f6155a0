package inventory

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/kilnhq/kiln/inventory/keys"
	"github.com/kilnhq/kiln/spec"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
)

// appliedState caches the current generation's content so that an Apply
// need not read the whole generation back.
type appliedState struct {
	pointer   Pointer
	ptrModRev int64
	sums      map[string][32]byte // relative key → sha256 of value
	unmanaged map[string][]byte   // unmanaged/<name> → value
	secrets   map[string][]byte   // BMC secrets as written (full key); nil: read them
}

type genInfo struct {
	Created   time.Time `json:"created"`
	Source    string    `json:"source"`
	Revision  string    `json:"revision"`
	Published bool      `json:"published"`
}

// ApplyMeta describes the source revision being applied.
type ApplyMeta struct {
	Source   string
	Revision string
	Digest   string
}

// ApplyResult says what an Apply did.
type ApplyResult struct {
	Generation    string
	NewGeneration bool // written as a new generation and flipped
	Added         int
	Changed       int
	Removed       int
	Unmanaged     []string // machines newly unmanaged
	Requests      int      // etcd requests used
	Unchanged     bool     // the content was already applied
}

// Apply makes inv the desired state, atomically: readers see either the
// previous revision or this one, never a mix.
func (s *Store) Apply(ctx context.Context, inv *spec.Inventory, meta ApplyMeta) (ApplyResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var res ApplyResult

	// The pointer and what it points at.
	resp, err := s.cli.Get(ctx, s.keys.DesiredPointer())
	res.Requests++
	if err != nil {
		return res, fmt.Errorf("read desired pointer: %w", err)
	}
	var old *appliedState
	var ptrModRev int64
	if len(resp.Kvs) > 0 {
		ptrModRev = resp.Kvs[0].ModRevision
		if s.applied != nil && s.applied.ptrModRev == ptrModRev {
			old = s.applied
		} else {
			var p Pointer
			if err := json.Unmarshal(resp.Kvs[0].Value, &p); err != nil {
				return res, fmt.Errorf("decode desired pointer: %w", err)
			}
			old, err = s.loadApplied(ctx, p, ptrModRev, resp.Header.Revision, &res)
			if err != nil {
				return res, err
			}
		}
	} else {
		old = &appliedState{sums: map[string][32]byte{}, unmanaged: map[string][]byte{}}
	}

	// The new content, by key relative to a generation.
	now := time.Now().UTC()
	next := map[string][]byte{}
	counts := map[string]int{}
	secrets := map[string][]byte{}
	for _, o := range inv.Objects() {
		h := o.GetHeader()
		o, err := s.withoutSecret(o, secrets)
		if err != nil {
			return res, err
		}
		b, err := json.Marshal(o)
		if err != nil {
			return res, fmt.Errorf("encode %s %s: %w", h.Kind, h.Metadata.Name, err)
		}
		if len(b) > s.MaxBytes {
			return res, fmt.Errorf("%s %s (%s) is %d bytes, more than one etcd request takes (%d): %w", h.Kind, h.Metadata.Name, h.Origin, len(b), s.MaxBytes, ErrTooLarge)
		}
		next[keys.GenObject(spec.Plural(h.Kind), h.Metadata.Name)] = b
		counts[h.Kind]++
	}
	unmanaged := map[string][]byte{}
	for k, b := range old.unmanaged {
		if _, name, _ := keys.SplitGenObject(k); inv.Machines[name] == nil {
			unmanaged[k] = b
		}
	}
	for k := range old.sums {
		seg, name, _ := keys.SplitGenObject(k)
		if seg == spec.Plural(spec.KindMachine) && inv.Machines[name] == nil {
			b, _ := json.Marshal(Unmanaged{Name: name, RemovedIn: meta.Revision, RemovedAt: now})
			unmanaged[keys.GenObject(keys.UnmanagedSegment, name)] = b
			res.Unmanaged = append(res.Unmanaged, name)
		}
	}
	sort.Strings(res.Unmanaged)
	for k, b := range unmanaged {
		next[k] = b
	}
	counts[KindUnmanaged] = len(unmanaged)

	// The difference.
	sums := make(map[string][32]byte, len(next))
	var puts []string
	for k, b := range next {
		sum := sha256.Sum256(b)
		sums[k] = sum
		prev, existed := old.sums[k]
		switch {
		case !existed:
			puts = append(puts, k)
			if !isUnmanaged(k) {
				res.Added++
			}
		case prev != sum:
			puts = append(puts, k)
			res.Changed++
		}
	}
	var dels []string
	for k := range old.sums {
		if _, ok := next[k]; !ok {
			dels = append(dels, k)
			if !isUnmanaged(k) {
				res.Removed++
			}
		}
	}
	sort.Strings(puts)
	sort.Strings(dels)

	// Plaintext BMC passwords: written before the pointer flips, so that
	// a rack reading the new revision finds them; stale ones dropped
	// after.
	secretPuts, staleSecrets, n, err := s.secretChanges(ctx, old.secrets, secrets)
	res.Requests += n
	if err != nil {
		return res, fmt.Errorf("apply revision %s: %w", meta.Revision, err)
	}

	ptr := Pointer{Generation: old.pointer.Generation, Previous: old.pointer.Previous, Source: meta.Source,
		Revision: meta.Revision, Digest: meta.Digest, AppliedAt: now, Counts: counts}
	if len(puts)+len(dels)+len(secretPuts)+len(staleSecrets) == 0 && old.pointer.Generation != "" && old.pointer.Revision == meta.Revision && old.pointer.Source == meta.Source {
		res.Unchanged = true
		res.Generation = old.pointer.Generation
		return res, nil
	}

	n, err = s.writeChunks(ctx, "", secretPuts, secrets)
	res.Requests += n
	if err != nil {
		return res, fmt.Errorf("apply revision %s: write BMC secrets: %w", meta.Revision, err)
	}

	size := 0
	for _, k := range puts {
		size += len(k) + len(next[k]) + 64
	}
	for _, k := range dels {
		size += len(k) + 64
	}
	if old.pointer.Generation != "" && len(puts)+len(dels)+1 <= s.MaxOps && size+1024 <= s.MaxBytes {
		// Small: edit the current generation in place, in one transaction.
		pb, _ := json.Marshal(ptr)
		ops := make([]clientv3.Op, 0, len(puts)+len(dels)+1)
		gp := s.keys.Gen(ptr.Generation)
		for _, k := range puts {
			ops = append(ops, clientv3.OpPut(gp+k, string(next[k])))
		}
		for _, k := range dels {
			ops = append(ops, clientv3.OpDelete(gp+k))
		}
		ops = append(ops, clientv3.OpPut(s.keys.DesiredPointer(), string(pb)))
		tr, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(s.keys.DesiredPointer()), "=", ptrModRev)).Then(ops...).Commit()
		res.Requests++
		if err != nil {
			return res, fmt.Errorf("apply revision %s: %w", meta.Revision, err)
		}
		if !tr.Succeeded {
			s.applied = nil
			return res, fmt.Errorf("apply revision %s: %w", meta.Revision, ErrConflict)
		}
		res.Generation = ptr.Generation
		s.applied = &appliedState{pointer: ptr, ptrModRev: tr.Header.Revision, sums: sums, unmanaged: unmanaged, secrets: secrets}
		n, err = s.deleteSecrets(ctx, staleSecrets)
		res.Requests += n
		if err != nil {
			s.applied.secrets = nil // some may remain: read them next time
		}
		return res, err
	}

	// Large: a new generation, written in chunks, published by one swap.
	gen, err := newGeneration()
	if err != nil {
		return res, err
	}
	res.NewGeneration = true
	gi, _ := json.Marshal(genInfo{Created: now, Source: meta.Source, Revision: meta.Revision})
	if _, err := s.cli.Put(ctx, s.keys.GenIndex(gen), string(gi)); err != nil {
		return res, fmt.Errorf("apply revision %s: start generation: %w", meta.Revision, err)
	}
	res.Requests++
	keys := make([]string, 0, len(next))
	for k := range next {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	n, err = s.writeChunks(ctx, s.keys.Gen(gen), keys, next)
	res.Requests += n
	if err != nil {
		s.dropGeneration(context.WithoutCancel(ctx), gen)
		return res, fmt.Errorf("apply revision %s: write generation %s: %w", meta.Revision, gen, err)
	}
	ptr.Generation, ptr.Previous = gen, old.pointer.Generation
	pb, _ := json.Marshal(ptr)
	gi, _ = json.Marshal(genInfo{Created: now, Source: meta.Source, Revision: meta.Revision, Published: true})
	tr, err := s.cli.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(s.keys.DesiredPointer()), "=", ptrModRev),
		clientv3.Compare(clientv3.CreateRevision(s.keys.GenIndex(gen)), ">", 0),
	).Then(clientv3.OpPut(s.keys.DesiredPointer(), string(pb)), clientv3.OpPut(s.keys.GenIndex(gen), string(gi))).Commit()
	res.Requests++
	if err != nil || !tr.Succeeded {
		s.applied = nil
		s.dropGeneration(context.WithoutCancel(ctx), gen)
		if err == nil {
			err = ErrConflict
		}
		return res, fmt.Errorf("apply revision %s: publish generation %s: %w", meta.Revision, gen, err)
	}
	res.Generation = gen
	s.applied = &appliedState{pointer: ptr, ptrModRev: tr.Header.Revision, sums: sums, unmanaged: unmanaged, secrets: secrets}
	res.Requests += s.collectGarbage(ctx, gen, old.pointer.Generation)
	n, err = s.deleteSecrets(ctx, staleSecrets)
	res.Requests += n
	if err != nil {
		s.applied.secrets = nil
	}
	return res, err
}

func newGeneration() (string, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("new generation id: %w", err)
	}
	return fmt.Sprintf("%x-%s", time.Now().UnixNano(), hex.EncodeToString(b[:])), nil
}

// writeChunks puts keys in transactions within the size limits, several
// in flight at once.
func (s *Store) writeChunks(ctx context.Context, prefix string, keys []string, values map[string][]byte) (int, error) {
	var chunks [][]clientv3.Op
	var cur []clientv3.Op
	size := 0
	for _, k := range keys {
		v := values[k]
		opSize := len(prefix) + len(k) + len(v) + 64
		if len(cur) > 0 && (len(cur) >= s.MaxOps || size+opSize > s.MaxBytes) {
			chunks = append(chunks, cur)
			cur, size = nil, 0
		}
		cur = append(cur, clientv3.OpPut(prefix+k, string(v)))
		size += opSize
	}
	if len(cur) > 0 {
		chunks = append(chunks, cur)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(1, s.Parallel))
	for _, ops := range chunks {
		g.Go(func() error {
			_, err := s.cli.Txn(gctx).Then(ops...).Commit()
			return err
		})
	}
	return len(chunks), g.Wait()
}

func (s *Store) dropGeneration(ctx context.Context, gen string) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := s.cli.Txn(ctx).Then(
		clientv3.OpDelete(s.keys.Gen(gen), clientv3.WithPrefix()),
		clientv3.OpDelete(s.keys.GenIndex(gen)),
	).Commit()
	if err != nil {
		s.log.Warn("could not remove abandoned generation; the next apply retries", "generation", gen, "err", err)
	}
}

// collectGarbage deletes published generations other than the current and
// previous ones. An unpublished generation may be another writer's work in
// progress: it is deleted only when it is old enough to be abandoned.
func (s *Store) collectGarbage(ctx context.Context, keep ...string) int {
	resp, err := s.cli.Get(ctx, s.keys.GenIndex(""), clientv3.WithPrefix())
	if err != nil {
		s.log.Warn("list generations", "err", err)
		return 1
	}
	requests := 1
	for _, kv := range resp.Kvs {
		gen, _ := s.keys.SplitGenIndex(string(kv.Key))
		if contains(keep, gen) {
			continue
		}
		var gi genInfo
		if json.Unmarshal(kv.Value, &gi) == nil && !gi.Published && time.Since(gi.Created) < 10*time.Minute {
			continue
		}
		s.dropGeneration(ctx, gen)
		requests++
	}
	return requests
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// loadApplied reads the current generation back to diff against it.
func (s *Store) loadApplied(ctx context.Context, p Pointer, ptrModRev, rev int64, res *ApplyResult) (*appliedState, error) {
	st := &appliedState{pointer: p, ptrModRev: ptrModRev, sums: map[string][32]byte{}, unmanaged: map[string][]byte{}}
	gp := s.keys.Gen(p.Generation)
	n, err := s.rangeAll(ctx, gp, rev, func(k, v []byte) error {
		rel := strings.TrimPrefix(string(k), gp)
		st.sums[rel] = sha256.Sum256(v)
		if isUnmanaged(rel) {
			st.unmanaged[rel] = bytes.Clone(v)
		}
		return nil
	})
	res.Requests += n
	if err != nil {
		return nil, fmt.Errorf("read generation %s: %w", p.Generation, err)
	}
	return st, nil
}

// isUnmanaged reports whether a key relative to a generation is an
// unmanaged marker.
func isUnmanaged(rel string) bool {
	seg, _, _ := keys.SplitGenObject(rel)
	return seg == keys.UnmanagedSegment
}
