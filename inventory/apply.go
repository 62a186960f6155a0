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
	old, ptrModRev, err := s.readApplied(ctx, &res)
	if err != nil {
		return res, err
	}
	c, err := s.plan(inv, old, ptrModRev, meta, &res)
	if err != nil {
		return res, err
	}

	// Plaintext BMC passwords: written before the pointer flips, so that
	// a rack reading the new revision finds them; stale ones dropped
	// after.
	secretPuts, staleSecrets, n, err := s.secretChanges(ctx, old.secrets, c.secrets)
	res.Requests += n
	if err != nil {
		return res, fmt.Errorf("apply revision %s: %w", meta.Revision, err)
	}
	c.staleSecrets = staleSecrets
	if len(c.puts)+len(c.dels)+len(secretPuts)+len(staleSecrets) == 0 && old.pointer.Generation != "" && old.pointer.Revision == meta.Revision && old.pointer.Source == meta.Source {
		res.Unchanged = true
		res.Generation = old.pointer.Generation
		return res, nil
	}
	n, err = s.writeChunks(ctx, "", secretPuts, c.secrets)
	res.Requests += n
	if err != nil {
		return res, fmt.Errorf("apply revision %s: write BMC secrets: %w", meta.Revision, err)
	}

	if old.pointer.Generation != "" && c.fits(s.MaxOps, s.MaxBytes) {
		err = s.applyInPlace(ctx, c, &res)
	} else {
		err = s.applyNewGeneration(ctx, c, &res)
	}
	return res, err
}

// change is what one Apply writes: the new revision's content, by key
// relative to a generation, and how it differs from the applied one.
type change struct {
	meta      ApplyMeta
	now       time.Time
	old       *appliedState
	ptrModRev int64   // the pointer's ModRevision the publishing write compares
	ptr       Pointer // the pointer to publish, still naming old's generation

	next      map[string][]byte   // the whole content, unmanaged markers included
	sums      map[string][32]byte // sha256 of each of next
	unmanaged map[string][]byte   // the unmanaged markers of next
	secrets   map[string][]byte   // BMC secrets by full key

	puts, dels   []string // keys of next to write, and of old to delete
	staleSecrets []string // BMC secrets to delete once the pointer flipped
}

// readApplied reads the pointer and what it points at: from the cache
// when the pointer is the one the last Apply wrote.
func (s *Store) readApplied(ctx context.Context, res *ApplyResult) (*appliedState, int64, error) {
	resp, err := s.cli.Get(ctx, s.keys.DesiredPointer())
	res.Requests++
	if err != nil {
		return nil, 0, fmt.Errorf("read desired pointer: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return &appliedState{sums: map[string][32]byte{}, unmanaged: map[string][]byte{}}, 0, nil
	}
	ptrModRev := resp.Kvs[0].ModRevision
	if s.applied != nil && s.applied.ptrModRev == ptrModRev {
		return s.applied, ptrModRev, nil
	}
	var p Pointer
	if err := json.Unmarshal(resp.Kvs[0].Value, &p); err != nil {
		return nil, 0, fmt.Errorf("decode desired pointer: %w", err)
	}
	old, err := s.loadApplied(ctx, p, ptrModRev, resp.Header.Revision, res)
	return old, ptrModRev, err
}

// plan computes the new content and its difference from old.
func (s *Store) plan(inv *spec.Inventory, old *appliedState, ptrModRev int64, meta ApplyMeta, res *ApplyResult) (*change, error) {
	c := &change{meta: meta, now: time.Now().UTC(), old: old, ptrModRev: ptrModRev, secrets: map[string][]byte{}}
	counts, err := s.encode(inv, c)
	if err != nil {
		return nil, err
	}
	c.markUnmanaged(inv, res)
	counts[KindUnmanaged] = len(c.unmanaged)
	c.diff(res)
	c.ptr = Pointer{Generation: old.pointer.Generation, Previous: old.pointer.Previous, Source: meta.Source,
		Revision: meta.Revision, Digest: meta.Digest, AppliedAt: c.now, Counts: counts}
	return c, nil
}

// encode puts inv's objects into c.next, their BMC secrets set apart in
// c.secrets, and returns how many there are of each kind.
func (s *Store) encode(inv *spec.Inventory, c *change) (map[string]int, error) {
	c.next = map[string][]byte{}
	counts := map[string]int{}
	for _, o := range inv.Objects() {
		h := o.GetHeader()
		o, err := s.withoutSecret(o, c.secrets)
		if err != nil {
			return nil, err
		}
		b, err := json.Marshal(o)
		if err != nil {
			return nil, fmt.Errorf("encode %s %s: %w", h.Kind, h.Metadata.Name, err)
		}
		if len(b) > s.MaxBytes {
			return nil, fmt.Errorf("%s %s (%s) is %d bytes, more than one etcd request takes (%d): %w", h.Kind, h.Metadata.Name, h.Origin, len(b), s.MaxBytes, ErrTooLarge)
		}
		c.next[keys.GenObject(spec.Plural(h.Kind), h.Metadata.Name)] = b
		counts[h.Kind]++
	}
	return counts, nil
}

// markUnmanaged keeps the markers of machines still missing from inv,
// adds one for every machine inv no longer has, and puts them into
// c.next.
func (c *change) markUnmanaged(inv *spec.Inventory, res *ApplyResult) {
	c.unmanaged = map[string][]byte{}
	for k, b := range c.old.unmanaged {
		if _, name, _ := keys.SplitGenObject(k); inv.Machines[name] == nil {
			c.unmanaged[k] = b
		}
	}
	for k := range c.old.sums {
		seg, name, _ := keys.SplitGenObject(k)
		if seg == spec.Plural(spec.KindMachine) && inv.Machines[name] == nil {
			b, _ := json.Marshal(Unmanaged{Name: name, RemovedIn: c.meta.Revision, RemovedAt: c.now})
			c.unmanaged[keys.GenObject(keys.UnmanagedSegment, name)] = b
			res.Unmanaged = append(res.Unmanaged, name)
		}
	}
	sort.Strings(res.Unmanaged)
	for k, b := range c.unmanaged {
		c.next[k] = b
	}
}

// diff finds the keys to write and to delete, and counts the objects
// added, changed and removed (unmanaged markers aside).
func (c *change) diff(res *ApplyResult) {
	c.sums = make(map[string][32]byte, len(c.next))
	for k, b := range c.next {
		sum := sha256.Sum256(b)
		c.sums[k] = sum
		prev, existed := c.old.sums[k]
		switch {
		case !existed:
			c.puts = append(c.puts, k)
			if !isUnmanaged(k) {
				res.Added++
			}
		case prev != sum:
			c.puts = append(c.puts, k)
			res.Changed++
		}
	}
	for k := range c.old.sums {
		if _, ok := c.next[k]; !ok {
			c.dels = append(c.dels, k)
			if !isUnmanaged(k) {
				res.Removed++
			}
		}
	}
	sort.Strings(c.puts)
	sort.Strings(c.dels)
}

// fits reports whether the writes and deletes, with the pointer, fit in
// one transaction.
func (c *change) fits(maxOps, maxBytes int) bool {
	size := 0
	for _, k := range c.puts {
		size += len(k) + len(c.next[k]) + 64
	}
	for _, k := range c.dels {
		size += len(k) + 64
	}
	return len(c.puts)+len(c.dels)+1 <= maxOps && size+1024 <= maxBytes
}

// applyInPlace is the small change: it edits the current generation in
// place, in one transaction with the pointer.
func (s *Store) applyInPlace(ctx context.Context, c *change, res *ApplyResult) error {
	ptr := c.ptr
	pb, _ := json.Marshal(ptr)
	ops := make([]clientv3.Op, 0, len(c.puts)+len(c.dels)+1)
	gp := s.keys.Gen(ptr.Generation)
	for _, k := range c.puts {
		ops = append(ops, clientv3.OpPut(gp+k, string(c.next[k])))
	}
	for _, k := range c.dels {
		ops = append(ops, clientv3.OpDelete(gp+k))
	}
	ops = append(ops, clientv3.OpPut(s.keys.DesiredPointer(), string(pb)))
	tr, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(s.keys.DesiredPointer()), "=", c.ptrModRev)).Then(ops...).Commit()
	res.Requests++
	if err != nil {
		return fmt.Errorf("apply revision %s: %w", c.meta.Revision, err)
	}
	if !tr.Succeeded {
		s.applied = nil
		return fmt.Errorf("apply revision %s: %w", c.meta.Revision, ErrConflict)
	}
	res.Generation = ptr.Generation
	s.applied = &appliedState{pointer: ptr, ptrModRev: tr.Header.Revision, sums: c.sums, unmanaged: c.unmanaged, secrets: c.secrets}
	return s.dropStaleSecrets(ctx, c.staleSecrets, res)
}

// applyNewGeneration is the large change: a new generation, written in
// chunks, published by one swap of the pointer.
func (s *Store) applyNewGeneration(ctx context.Context, c *change, res *ApplyResult) error {
	meta := c.meta
	gen, err := newGeneration()
	if err != nil {
		return err
	}
	res.NewGeneration = true
	gi, _ := json.Marshal(genInfo{Created: c.now, Source: meta.Source, Revision: meta.Revision})
	if _, err := s.cli.Put(ctx, s.keys.GenIndex(gen), string(gi)); err != nil {
		return fmt.Errorf("apply revision %s: start generation: %w", meta.Revision, err)
	}
	res.Requests++
	names := make([]string, 0, len(c.next))
	for k := range c.next {
		names = append(names, k)
	}
	sort.Strings(names)
	n, err := s.writeChunks(ctx, s.keys.Gen(gen), names, c.next)
	res.Requests += n
	if err != nil {
		s.dropGeneration(context.WithoutCancel(ctx), gen)
		return fmt.Errorf("apply revision %s: write generation %s: %w", meta.Revision, gen, err)
	}
	ptr := c.ptr
	ptr.Generation, ptr.Previous = gen, c.old.pointer.Generation
	pb, _ := json.Marshal(ptr)
	gi, _ = json.Marshal(genInfo{Created: c.now, Source: meta.Source, Revision: meta.Revision, Published: true})
	tr, err := s.cli.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(s.keys.DesiredPointer()), "=", c.ptrModRev),
		clientv3.Compare(clientv3.CreateRevision(s.keys.GenIndex(gen)), ">", 0),
	).Then(clientv3.OpPut(s.keys.DesiredPointer(), string(pb)), clientv3.OpPut(s.keys.GenIndex(gen), string(gi))).Commit()
	res.Requests++
	if err != nil || !tr.Succeeded {
		s.applied = nil
		s.dropGeneration(context.WithoutCancel(ctx), gen)
		if err == nil {
			err = ErrConflict
		}
		return fmt.Errorf("apply revision %s: publish generation %s: %w", meta.Revision, gen, err)
	}
	res.Generation = gen
	s.applied = &appliedState{pointer: ptr, ptrModRev: tr.Header.Revision, sums: c.sums, unmanaged: c.unmanaged, secrets: c.secrets}
	res.Requests += s.collectGarbage(ctx, gen, c.old.pointer.Generation)
	return s.dropStaleSecrets(ctx, c.staleSecrets, res)
}

// dropStaleSecrets deletes, once the pointer flipped, the BMC secrets the
// applied revision no longer has.
func (s *Store) dropStaleSecrets(ctx context.Context, stale []string, res *ApplyResult) error {
	n, err := s.deleteSecrets(ctx, stale)
	res.Requests += n
	if err != nil {
		s.applied.secrets = nil // some may remain: read them next time
	}
	return err
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
func (s *Store) writeChunks(ctx context.Context, prefix string, names []string, values map[string][]byte) (int, error) {
	var chunks [][]clientv3.Op
	var cur []clientv3.Op
	size := 0
	for _, k := range names {
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
