package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ErrHashMismatch is wrapped by the error of a fetch whose content did not
// have the expected SHA-256.
var ErrHashMismatch = errors.New("hash mismatch")

// ErrNotCached is returned by lookups that may not fetch when the image is
// not in the cache.
var ErrNotCached = errors.New("image not in the cache")

// Artifact is a file to cache: where to get it and its expected SHA-256
// (lower- or upper-case hex). It mirrors spec.Artifact.
type Artifact struct {
	URL    string
	SHA256 string
}

// Options configure a Cache.
type Options struct {
	Dir          string        // the cache folder; verified images live in Dir/sha256/<hex>
	SeedDirs     []string      // folders (walked recursively) whose files are used before any origin, by their hash
	MaxFetches   int           // concurrent fetches from origins and seeds; default 4
	MaxServes    int           // concurrent GET transfers served by Handler; default 32
	QueueTimeout time.Duration // how long a request waits for a transfer slot before 503; default 5m
	Client       *http.Client  // for http and https origins; default: no overall timeout, 1 min for response headers
}

// State is where an image is in its life.
type State string

// The states of an image.
const (
	Missing  State = "missing"  // not in the cache (or not verified yet since start)
	Fetching State = "fetching" // being fetched or verified
	Ready    State = "ready"    // verified and served
	Failed   State = "failed"   // the last fetch failed; Status.Err says why
)

// Status is what the cache knows about one image.
type Status struct {
	State State
	Err   string // for Failed: the last error, e.g. "... hash mismatch: expected sha256 ..., got ..."
	Bytes int64  // for Ready: the size
}

// Entry is a verified image on disk.
type Entry struct {
	SHA256  string
	Path    string
	Size    int64
	ModTime time.Time
}

// Cache is a rack's image cache. Its methods are safe for concurrent use.
type Cache struct {
	o        Options
	m        *Metrics
	log      *slog.Logger
	dir      string // Dir/sha256
	tmp      string // Dir/tmp
	fetchSem chan struct{}
	serveSem chan struct{}

	mu      sync.Mutex
	entries map[string]*entry

	seedMu sync.Mutex
	seeds  map[string]seedFile // path → what is known of it
}

type entry struct {
	onDisk bool // a file from an earlier run, not verified yet
	ready  *Entry
	err    error // the last failure
	flight *flight
}

// flight is one fetch in progress; callers for the same hash wait on it.
type flight struct {
	done    chan struct{}
	origin  bool // may fetch from seeds and origins, not only verify a file on disk
	waiters int  // callers waiting besides the one fetching (for tests)
	e       Entry
	err     error
}

type seedFile struct {
	size int64
	mod  time.Time
	hash string
}

// New opens (creating it when needed) the cache in o.Dir. Files left by an
// earlier run are indexed but not trusted: each is hashed again before it
// is first served, and removed if it no longer matches its name. Temporary
// files of interrupted fetches are removed.
func New(o Options, m *Metrics, log *slog.Logger) (*Cache, error) {
	if o.Dir == "" {
		return nil, errors.New("image cache: no folder given")
	}
	if o.MaxFetches <= 0 {
		o.MaxFetches = 4
	}
	if o.MaxServes <= 0 {
		o.MaxServes = 32
	}
	if o.QueueTimeout <= 0 {
		o.QueueTimeout = 5 * time.Minute
	}
	if o.Client == nil {
		// No overall timeout (images are large); a silent origin still fails.
		o.Client = &http.Client{}
		if dt, ok := http.DefaultTransport.(*http.Transport); ok {
			tr := dt.Clone()
			tr.ResponseHeaderTimeout = time.Minute
			o.Client.Transport = tr
		}
	}
	if m == nil {
		m = NewMetrics(prometheus.NewRegistry())
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Cache{
		o:        o,
		m:        m,
		log:      log,
		dir:      filepath.Join(o.Dir, "sha256"),
		tmp:      filepath.Join(o.Dir, "tmp"),
		fetchSem: make(chan struct{}, o.MaxFetches),
		serveSem: make(chan struct{}, o.MaxServes),
		entries:  map[string]*entry{},
		seeds:    map[string]seedFile{},
	}
	if err := os.RemoveAll(c.tmp); err != nil {
		return nil, fmt.Errorf("image cache: clear %s: %w", c.tmp, err)
	}
	for _, d := range []string{c.dir, c.tmp} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("image cache: %w", err)
		}
	}
	des, err := os.ReadDir(c.dir)
	if err != nil {
		return nil, fmt.Errorf("image cache: %w", err)
	}
	for _, de := range des {
		name := de.Name()
		if h, err := parseHash(name); err != nil || h != name || !de.Type().IsRegular() {
			log.Warn("image cache: removing a file that is not named by its sha256", "path", filepath.Join(c.dir, name))
			if err := os.RemoveAll(filepath.Join(c.dir, name)); err != nil {
				return nil, fmt.Errorf("image cache: %w", err)
			}
			continue
		}
		c.entries[name] = &entry{onDisk: true}
	}
	return c, nil
}

// parseHash returns the lower-case form of a hex SHA-256.
func parseHash(s string) (string, error) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("%q is not a hex sha256 (64 hex digits)", s)
	}
	return hex.EncodeToString(b), nil
}

// Status reports what the cache knows about the image with hash sha.
func (c *Cache) Status(sha string) Status {
	h, err := parseHash(sha)
	if err != nil {
		return Status{State: Failed, Err: err.Error()}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[h]
	switch {
	case e == nil:
		return Status{State: Missing}
	case e.ready != nil:
		return Status{State: Ready, Bytes: e.ready.Size}
	case e.flight != nil:
		return Status{State: Fetching}
	case e.err != nil:
		return Status{State: Failed, Err: e.err.Error()}
	}
	return Status{State: Missing}
}

// Ensure returns the verified file for a, fetching it when it is not in the
// cache: first a file left by an earlier run, then the seed folders, then
// a.URL. Concurrent calls for the same hash share one fetch.
func (c *Cache) Ensure(ctx context.Context, a Artifact) (Entry, error) {
	h, err := parseHash(a.SHA256)
	if err != nil {
		return Entry{}, fmt.Errorf("ensure %s: %w", a.URL, err)
	}
	return c.ensure(ctx, h, a.URL, true)
}

// local returns the verified file for h without fetching from an origin or
// searching seeds: a file left by an earlier run is verified first.
func (c *Cache) local(ctx context.Context, h string) (Entry, error) {
	c.mu.Lock()
	e := c.entries[h]
	ok := e != nil && (e.ready != nil || e.onDisk || e.flight != nil)
	c.mu.Unlock()
	if !ok {
		return Entry{}, ErrNotCached
	}
	return c.ensure(ctx, h, "", false)
}

func (c *Cache) ensure(ctx context.Context, h, rawURL string, fetch bool) (Entry, error) {
	for {
		c.mu.Lock()
		e := c.entries[h]
		if e == nil {
			e = &entry{}
			c.entries[h] = e
		}
		if e.ready != nil {
			r := *e.ready
			c.mu.Unlock()
			return r, nil
		}
		if f := e.flight; f != nil {
			f.waiters++
			c.mu.Unlock()
			select {
			case <-f.done:
			case <-ctx.Done():
				c.mu.Lock()
				f.waiters--
				c.mu.Unlock()
				return Entry{}, ctx.Err()
			}
			if f.err == nil {
				return f.e, nil
			}
			// The fetcher's own context ended: try again with ours.
			if ctx.Err() == nil && (errors.Is(f.err, context.Canceled) || errors.Is(f.err, context.DeadlineExceeded)) {
				continue
			}
			// A fetcher that could not reach the origin does not answer
			// for one that may.
			if fetch && !f.origin {
				continue
			}
			return Entry{}, f.err
		}
		if !fetch && !e.onDisk {
			c.mu.Unlock()
			return Entry{}, ErrNotCached
		}
		f := &flight{done: make(chan struct{}), origin: fetch}
		e.flight = f
		onDisk := e.onDisk
		c.mu.Unlock()

		f.e, f.err = c.fetch(ctx, h, rawURL, onDisk, fetch)

		c.mu.Lock()
		e.flight = nil
		if onDisk {
			e.onDisk = false // verified (and kept) or removed
		}
		switch {
		case f.err == nil:
			e.ready, e.err = &f.e, nil
			c.m.bytes.Add(float64(f.e.Size))
		case errors.Is(f.err, ErrNotCached), ctx.Err() != nil:
			// Not a verdict on the image: keep the last one.
		default:
			e.err = f.err
		}
		c.mu.Unlock()
		close(f.done)
		return f.e, f.err
	}
}

// fetch produces the verified file for h: from the file left by an earlier
// run, a seed folder or the origin, in that order.
func (c *Cache) fetch(ctx context.Context, h, rawURL string, onDisk, origin bool) (Entry, error) {
	final := filepath.Join(c.dir, h)
	if onDisk {
		got, err := hashFile(ctx, final)
		switch {
		case err != nil && ctx.Err() != nil:
			return Entry{}, err
		case err == nil && got == h:
			return c.entryFor(h)
		case err == nil:
			c.log.Warn("image cache: removing a corrupted image", "path", final, "sha256", h, "actual_sha256", got)
			err = fmt.Errorf("cached file %s is corrupted: %w: expected sha256 %s, got %s; removed", final, ErrHashMismatch, h, got)
			if rerr := os.Remove(final); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
				c.log.Error("image cache: remove corrupted image", "path", final, "err", rerr)
			}
			c.m.fetches.WithLabelValues(resultMismatch).Inc()
			if !origin {
				return Entry{}, err
			}
		default:
			c.log.Warn("image cache: cannot verify a cached image; fetching it again", "path", final, "err", err)
			_ = os.Remove(final)
		}
	}
	if !origin {
		return Entry{}, ErrNotCached
	}

	select {
	case c.fetchSem <- struct{}{}:
	case <-ctx.Done():
		return Entry{}, ctx.Err()
	}
	defer func() { <-c.fetchSem }()
	start := time.Now()

	if e, ok := c.fromSeeds(ctx, h); ok {
		c.m.fetches.WithLabelValues(resultSeeded).Inc()
		c.m.fetchTime.Observe(time.Since(start).Seconds())
		return e, nil
	}
	if ctx.Err() != nil {
		return Entry{}, ctx.Err()
	}
	if rawURL == "" {
		c.m.fetches.WithLabelValues(resultError).Inc()
		return Entry{}, fmt.Errorf("image sha256 %s: not cached, not in a seed folder, and no URL to fetch it from", h)
	}
	log := c.log.With("url", rawURL, "sha256", h)
	log.Info("image cache: fetching")
	e, err := c.fromOrigin(ctx, h, rawURL)
	c.m.fetchTime.Observe(time.Since(start).Seconds())
	switch {
	case err == nil:
		c.m.fetches.WithLabelValues(resultOK).Inc()
		log.Info("image cache: fetched", "bytes", e.Size, "took", time.Since(start).Round(time.Millisecond))
	case errors.Is(err, ErrHashMismatch):
		c.m.fetches.WithLabelValues(resultMismatch).Inc()
		log.Error("image cache: fetch failed", "err", err)
	case ctx.Err() != nil:
		log.Info("image cache: fetch abandoned", "err", err)
	default:
		c.m.fetches.WithLabelValues(resultError).Inc()
		log.Error("image cache: fetch failed", "err", err)
	}
	return e, err
}

func (c *Cache) entryFor(h string) (Entry, error) {
	p := filepath.Join(c.dir, h)
	fi, err := os.Stat(p)
	if err != nil {
		return Entry{}, fmt.Errorf("image cache: %w", err)
	}
	return Entry{SHA256: h, Path: p, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// fromOrigin downloads rawURL into the cache as h.
func (c *Cache) fromOrigin(ctx context.Context, h, rawURL string) (Entry, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return Entry{}, fmt.Errorf("fetch %s: %w", rawURL, err)
	}
	var body io.ReadCloser
	switch u.Scheme {
	case "http", "https":
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
		if err != nil {
			return Entry{}, fmt.Errorf("fetch %s: %w", rawURL, err)
		}
		resp, err := c.o.Client.Do(req)
		if err != nil {
			return Entry{}, fmt.Errorf("fetch %s: %w", rawURL, err)
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return Entry{}, fmt.Errorf("fetch %s: HTTP status %s", rawURL, resp.Status)
		}
		body = resp.Body
	case "file":
		p := u.Path
		if u.Host != "" && u.Host != "localhost" {
			return Entry{}, fmt.Errorf("fetch %s: file URLs must be local (file:///path)", rawURL)
		}
		f, err := os.Open(p)
		if err != nil {
			return Entry{}, fmt.Errorf("fetch %s: %w", rawURL, err)
		}
		body = f
	default:
		return Entry{}, fmt.Errorf("fetch %s: unsupported scheme %q (http, https or file)", rawURL, u.Scheme)
	}
	defer body.Close()
	return c.store(ctx, h, rawURL, body)
}

// store streams r to a temporary file while hashing it and renames it to
// Dir/sha256/h only when the hash matches.
func (c *Cache) store(ctx context.Context, h, from string, r io.Reader) (Entry, error) {
	tmp, err := os.CreateTemp(c.tmp, h+"-*")
	if err != nil {
		return Entry{}, fmt.Errorf("fetch %s: %w", from, err)
	}
	keep := false
	defer func() {
		if !keep {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	sum := sha256.New()
	if _, err := io.Copy(io.MultiWriter(tmp, sum), ctxReader{ctx, r}); err != nil {
		return Entry{}, fmt.Errorf("fetch %s: %w", from, err)
	}
	if got := hex.EncodeToString(sum.Sum(nil)); got != h {
		return Entry{}, fmt.Errorf("fetch %s: %w: expected sha256 %s, got %s", from, ErrHashMismatch, h, got)
	}
	// Images are served to anyone on the boot network: not secret.
	if err := tmp.Chmod(0o644); err != nil {
		return Entry{}, fmt.Errorf("fetch %s: %w", from, err)
	}
	if err := tmp.Sync(); err != nil {
		return Entry{}, fmt.Errorf("fetch %s: %w", from, err)
	}
	if err := tmp.Close(); err != nil {
		return Entry{}, fmt.Errorf("fetch %s: %w", from, err)
	}
	final := filepath.Join(c.dir, h)
	if err := os.Rename(tmp.Name(), final); err != nil {
		return Entry{}, fmt.Errorf("fetch %s: %w", from, err)
	}
	keep = true
	return c.entryFor(h)
}

// ctxReader stops a copy when ctx ends (file and seed copies have no
// request to cancel).
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// hashFile returns the hex SHA-256 of the file at p.
func hashFile(ctx context.Context, p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sum := sha256.New()
	if _, err := io.Copy(sum, ctxReader{ctx, f}); err != nil {
		return "", fmt.Errorf("hash %s: %w", p, err)
	}
	return hex.EncodeToString(sum.Sum(nil)), nil
}

// Stage fetches the artifacts in the background, at most MaxFetches at a
// time; failures are logged and shown by Status. The returned channel is
// closed when every fetch has ended; the fetches end with ctx.
func (c *Cache) Stage(ctx context.Context, artifacts []Artifact) <-chan struct{} {
	done := make(chan struct{})
	var wg sync.WaitGroup
	for _, a := range artifacts {
		wg.Go(func() {
			if _, err := c.Ensure(ctx, a); err != nil && ctx.Err() == nil {
				c.log.Warn("image cache: staging failed", "url", a.URL, "sha256", a.SHA256, "err", err)
			}
		})
	}
	go func() {
		wg.Wait()
		close(done)
	}()
	return done
}
