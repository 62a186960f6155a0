package pki

import (
	"os"
	"sync"
)

// Reloader holds a value loaded from files (a certificate and its key, a
// CA bundle) and loads it again when they change, so that a renewed file
// is picked up without a restart. The files are looked at (a stat each)
// before they are read, so a change during the read shows as a change
// next time. A load that fails keeps the previous value. Safe for
// concurrent use.
type Reloader[T any] struct {
	paths []string
	load  func() (T, error)

	mu   sync.Mutex
	val  T
	seen []os.FileInfo
}

// NewReloader loads the value from paths with load.
func NewReloader[T any](load func() (T, error), paths ...string) (*Reloader[T], error) {
	r := &Reloader[T]{paths: paths, load: load}
	if _, err := r.Load(); err != nil {
		return nil, err
	}
	return r, nil
}

// Get returns the value, loaded again first when a file changed; loaded
// reports that it was, err why a changed file did not load (the previous
// value is returned and the load is tried again next time).
func (r *Reloader[T]) Get() (v T, loaded bool, err error) {
	if !r.Changed() {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.val, false, nil
	}
	v, err = r.Load()
	return v, err == nil, err
}

// Changed reports whether a file's identity, size or modification time
// differ from when it was last read. A file that cannot be looked at
// now (in the middle of being replaced) counts as unchanged.
func (r *Reloader[T]) Changed() bool {
	seen, err := r.stat()
	if err != nil {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, fi := range seen {
		old := r.seen[i]
		if !os.SameFile(fi, old) || fi.Size() != old.Size() || !fi.ModTime().Equal(old.ModTime()) {
			return true
		}
	}
	return false
}

// Load reads the files again whether or not they changed. On failure the
// previous value is returned with the error.
func (r *Reloader[T]) Load() (T, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	seen, err := r.stat()
	if err != nil {
		return r.val, err
	}
	v, err := r.load()
	if err != nil {
		return r.val, err
	}
	r.val, r.seen = v, seen
	return v, nil
}

func (r *Reloader[T]) stat() ([]os.FileInfo, error) {
	fi := make([]os.FileInfo, len(r.paths))
	for i, p := range r.paths {
		var err error
		if fi[i], err = os.Stat(p); err != nil {
			return nil, err
		}
	}
	return fi, nil
}
