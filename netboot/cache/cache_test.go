package cache

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kilnhq/kiln/spec/kilntest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// blob is random content and its hash.
type blob struct {
	data []byte
	sha  string
}

func newBlob(t testing.TB, n int) blob {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	s := sha256.Sum256(b)
	return blob{b, hex.EncodeToString(s[:])}
}

// origin is an httptest server serving blobs by path and counting requests.
type origin struct {
	*httptest.Server
	mu    sync.Mutex
	files map[string][]byte
	hits  atomic.Int64
	gate  chan struct{} // when set, requests wait for it to close
}

func newOrigin(t testing.TB) *origin {
	o := &origin{files: map[string][]byte{}}
	o.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.hits.Add(1)
		o.mu.Lock()
		data, ok := o.files[r.URL.Path]
		gate := o.gate
		o.mu.Unlock()
		if gate != nil {
			select {
			case <-gate:
			case <-r.Context().Done():
				return
			}
		}
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(data)
	}))
	t.Cleanup(o.Close)
	return o
}

func (o *origin) add(path string, data []byte) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.files[path] = data
	return o.URL + path
}

type harness struct {
	c   *Cache
	reg *prometheus.Registry
	dir string
}

func newCache(t testing.TB, o Options) harness {
	t.Helper()
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	reg := prometheus.NewRegistry()
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	c, err := New(o, NewMetrics(reg), log)
	if err != nil {
		t.Fatal(err)
	}
	return harness{c, reg, o.Dir}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func fetchCount(t testing.TB, h harness, result string) float64 {
	t.Helper()
	return testutil.ToFloat64(h.c.m.fetches.WithLabelValues(result))
}

// get fetches path from srv and returns the status and body.
func get(t testing.TB, srv *httptest.Server, path string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

func TestEnsureFetchesAndVerifies(t *testing.T) {
	t.Parallel()
	o := newOrigin(t)
	b := newBlob(t, 100_000)
	u := o.add("/vmlinuz", b.data)
	h := newCache(t, Options{})

	if s := h.c.Status(b.sha); s.State != Missing {
		t.Fatalf("status before: %+v, want missing", s)
	}
	e, err := h.c.Ensure(t.Context(), Artifact{URL: u, SHA256: strings.ToUpper(b.sha)})
	if err != nil {
		t.Fatal(err)
	}
	if e.SHA256 != b.sha || e.Size != int64(len(b.data)) || e.Path != filepath.Join(h.dir, "sha256", b.sha) {
		t.Fatalf("entry %+v", e)
	}
	got, err := os.ReadFile(e.Path)
	if err != nil || string(got) != string(b.data) {
		t.Fatalf("cached file differs (err %v)", err)
	}
	if s := h.c.Status(b.sha); s.State != Ready || s.Bytes != int64(len(b.data)) {
		t.Fatalf("status: %+v", s)
	}
	// A second Ensure is served from the cache.
	if _, err := h.c.Ensure(t.Context(), Artifact{URL: u, SHA256: b.sha}); err != nil {
		t.Fatal(err)
	}
	if n := o.hits.Load(); n != 1 {
		t.Fatalf("origin requests: %d, want 1", n)
	}
	assertNoTemp(t, h.dir)

	srv := httptest.NewServer(h.c.Handler())
	defer srv.Close()
	for _, p := range []string{"/images/sha256/" + b.sha, "/images/sha256/" + b.sha + "/vmlinuz"} {
		code, body := get(t, srv, p)
		if code != 200 || string(body) != string(b.data) {
			t.Fatalf("GET %s: %d, %d bytes", p, code, len(body))
		}
	}
	for _, p := range []string{"/images/sha256/" + strings.Repeat("0", 64), "/images/sha256/xyz", "/other"} {
		if code, _ := get(t, srv, p); code != 404 {
			t.Fatalf("GET %s: %d, want 404", p, code)
		}
	}

	want := `
# HELP kiln_image_cache_bytes Bytes of verified images stored in the cache.
# TYPE kiln_image_cache_bytes gauge
kiln_image_cache_bytes 100000
# HELP kiln_image_cache_fetch_total Image fetches by result (ok, hash_mismatch, error, seeded).
# TYPE kiln_image_cache_fetch_total counter
kiln_image_cache_fetch_total{result="error"} 0
kiln_image_cache_fetch_total{result="hash_mismatch"} 0
kiln_image_cache_fetch_total{result="ok"} 1
kiln_image_cache_fetch_total{result="seeded"} 0
# HELP kiln_http_boot_bytes_total Bytes of images sent by the HTTP boot handler.
# TYPE kiln_http_boot_bytes_total counter
kiln_http_boot_bytes_total 200000
# HELP kiln_http_image_queue Image requests waiting for a transfer slot.
# TYPE kiln_http_image_queue gauge
kiln_http_image_queue 0
`
	if err := testutil.GatherAndCompare(h.reg, strings.NewReader(want),
		"kiln_image_cache_bytes", "kiln_image_cache_fetch_total", "kiln_http_boot_bytes_total", "kiln_http_image_queue"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(h.c.m.fetchTime); n != 1 {
		t.Fatalf("fetch_seconds series: %d", n)
	}
}

func assertNoTemp(t testing.TB, dir string) {
	t.Helper()
	des, err := os.ReadDir(filepath.Join(dir, "tmp"))
	if err != nil {
		t.Fatal(err)
	}
	if len(des) != 0 {
		t.Fatalf("temporary files left: %v", des)
	}
}

func TestEnsureHashMismatch(t *testing.T) {
	t.Parallel()
	o := newOrigin(t)
	b := newBlob(t, 50_000)
	u := o.add("/disk.raw", b.data)
	wrong := newBlob(t, 10).sha
	h := newCache(t, Options{})

	_, err := h.c.Ensure(t.Context(), Artifact{URL: u, SHA256: wrong})
	if !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("err %v, want a hash mismatch", err)
	}
	for _, s := range []string{u, wrong, b.sha, "hash mismatch"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not name %q", err, s)
		}
	}
	s := h.c.Status(wrong)
	if s.State != Failed || !strings.Contains(s.Err, "hash mismatch") || !strings.Contains(s.Err, b.sha) {
		t.Fatalf("status %+v", s)
	}
	if _, err := os.Stat(filepath.Join(h.dir, "sha256", wrong)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the unverified file is in the cache (stat: %v)", err)
	}
	assertNoTemp(t, h.dir)
	srv := httptest.NewServer(h.c.Handler())
	defer srv.Close()
	if code, _ := get(t, srv, "/images/sha256/"+wrong); code != 404 {
		t.Fatalf("GET of a failed image: %d, want 404", code)
	}
	if fetchCount(t, h, resultMismatch) != 1 || fetchCount(t, h, resultOK) != 0 {
		t.Fatal("fetch_total not counted as hash_mismatch")
	}
	if v := testutil.ToFloat64(h.c.m.bytes); v != 0 {
		t.Fatalf("cache bytes %v, want 0", v)
	}

	// A failed image is fetched again when asked, e.g. after the origin is fixed.
	o.add("/disk.raw", newBlob(t, 10).data)
	if _, err := h.c.Ensure(t.Context(), Artifact{URL: u, SHA256: wrong}); err != nil && !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("second try: %v", err)
	}
	if n := o.hits.Load(); n != 2 {
		t.Fatalf("origin requests %d, want 2 (a failure is not cached)", n)
	}
}

func TestEnsureErrors(t *testing.T) {
	t.Parallel()
	o := newOrigin(t)
	b := newBlob(t, 10)
	h := newCache(t, Options{})
	for name, a := range map[string]Artifact{
		"404":        {URL: o.URL + "/missing", SHA256: b.sha},
		"scheme":     {URL: "ftp://127.0.0.1/x", SHA256: b.sha},
		"no file":    {URL: "file:///nonexistent/kiln/x", SHA256: b.sha},
		"bad sha256": {URL: o.URL + "/x", SHA256: "abc"},
		"no url":     {SHA256: b.sha},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := h.c.Ensure(t.Context(), a)
			if err == nil {
				t.Fatal("no error")
			}
			if a.URL != "" && !strings.Contains(err.Error(), a.URL) {
				t.Fatalf("error %q does not name the URL", err)
			}
			t.Log(err)
		})
	}
	if s := h.c.Status(b.sha); s.State != Failed || s.Err == "" {
		t.Fatalf("status %+v", s)
	}
}

func TestConcurrentEnsureSharesOneFetch(t *testing.T) {
	t.Parallel()
	o := newOrigin(t)
	b := newBlob(t, 1<<20)
	u := o.add("/initrd", b.data)
	gate := make(chan struct{})
	o.gate = gate
	h := newCache(t, Options{})

	const n = 20
	errs := make(chan error, n)
	for range n {
		go func() {
			_, err := h.c.Ensure(t.Context(), Artifact{URL: u, SHA256: b.sha})
			errs <- err
		}()
	}
	// Release the origin once the other callers all wait on the fetch.
	kilntest.Eventually(t, 10*time.Second, "the other callers to wait on the fetch", func() bool {
		h.c.mu.Lock()
		defer h.c.mu.Unlock()
		e := h.c.entries[b.sha]
		return e != nil && e.flight != nil && e.flight.waiters == n-1
	})
	if s := h.c.Status(b.sha); s.State != Fetching {
		t.Fatalf("status while fetching: %+v", s)
	}
	close(gate)
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := o.hits.Load(); got != 1 {
		t.Fatalf("origin requests: %d, want 1", got)
	}
}

func TestCallerCancelDoesNotFailOthers(t *testing.T) {
	t.Parallel()
	o := newOrigin(t)
	b := newBlob(t, 1000)
	u := o.add("/k", b.data)
	gate := make(chan struct{})
	o.gate = gate
	h := newCache(t, Options{})

	ctx, cancel := context.WithCancel(t.Context())
	first := make(chan error, 1)
	go func() {
		_, err := h.c.Ensure(ctx, Artifact{URL: u, SHA256: b.sha})
		first <- err
	}()
	kilntest.Eventually(t, 10*time.Second, "the origin to be hit once", func() bool { return o.hits.Load() == 1 })
	second := make(chan error, 1)
	go func() {
		_, err := h.c.Ensure(t.Context(), Artifact{URL: u, SHA256: b.sha})
		second <- err
	}()
	kilntest.Eventually(t, 10*time.Second, "the second caller to wait on the flight", func() bool {
		h.c.mu.Lock()
		defer h.c.mu.Unlock()
		return h.c.entries[b.sha].flight.waiters == 1
	})
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller: %v", err)
	}
	close(gate)
	if err := <-second; err != nil {
		t.Fatalf("second caller: %v", err)
	}
	if s := h.c.Status(b.sha); s.State != Ready {
		t.Fatalf("status %+v", s)
	}
}

func TestSeedDirs(t *testing.T) {
	t.Parallel()
	o := newOrigin(t)
	named, other, absent := newBlob(t, 3000), newBlob(t, 4000), newBlob(t, 10)
	seed := t.TempDir()
	if err := os.MkdirAll(filepath.Join(seed, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	must(t, os.WriteFile(filepath.Join(seed, named.sha), named.data, 0o644))
	must(t, os.WriteFile(filepath.Join(seed, "sub", "ubuntu.img"), other.data, 0o644))
	must(t, os.WriteFile(filepath.Join(seed, "junk"), []byte("junk"), 0o644))
	h := newCache(t, Options{SeedDirs: []string{t.TempDir(), seed}})

	for _, b := range []blob{named, other} {
		e, err := h.c.Ensure(t.Context(), Artifact{URL: o.URL + "/never", SHA256: b.sha})
		if err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(e.Path)
		if string(got) != string(b.data) {
			t.Fatal("seeded file differs")
		}
	}
	if n := o.hits.Load(); n != 0 {
		t.Fatalf("origin requests: %d, want 0 (seeded)", n)
	}
	if fetchCount(t, h, resultSeeded) != 2 || fetchCount(t, h, resultOK) != 0 {
		t.Fatal("fetch_total not counted as seeded")
	}
	// Not in the seeds: the origin is asked.
	u := o.add("/absent", absent.data)
	if _, err := h.c.Ensure(t.Context(), Artifact{URL: u, SHA256: absent.sha}); err != nil {
		t.Fatal(err)
	}
	if n := o.hits.Load(); n != 1 {
		t.Fatalf("origin requests: %d, want 1", n)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestFileURL(t *testing.T) {
	t.Parallel()
	b := newBlob(t, 70_000)
	p := filepath.Join(t.TempDir(), "initrd.img")
	must(t, os.WriteFile(p, b.data, 0o644))
	h := newCache(t, Options{})
	e, err := h.c.Ensure(t.Context(), Artifact{URL: "file://" + p, SHA256: b.sha})
	if err != nil {
		t.Fatal(err)
	}
	if e.Size != int64(len(b.data)) || fetchCount(t, h, resultOK) != 1 {
		t.Fatalf("entry %+v", e)
	}
}

func TestStage(t *testing.T) {
	t.Parallel()
	o := newOrigin(t)
	var arts []Artifact
	var blobs []blob
	for i := range 10 {
		b := newBlob(t, 10_000+i)
		blobs = append(blobs, b)
		arts = append(arts, Artifact{URL: o.add("/"+b.sha, b.data), SHA256: b.sha})
	}
	bad := newBlob(t, 5)
	arts = append(arts, Artifact{URL: o.add("/bad", []byte("other")), SHA256: bad.sha})
	h := newCache(t, Options{MaxFetches: 2})
	<-h.c.Stage(t.Context(), arts)
	for _, b := range blobs {
		if s := h.c.Status(b.sha); s.State != Ready {
			t.Fatalf("%s: %+v", b.sha, s)
		}
	}
	if s := h.c.Status(bad.sha); s.State != Failed || !strings.Contains(s.Err, "hash mismatch") {
		t.Fatalf("bad: %+v", s)
	}
}

func TestCorruptedAtStartup(t *testing.T) {
	t.Parallel()
	o := newOrigin(t)
	good, corrupt := newBlob(t, 20_000), newBlob(t, 20_000)
	dir := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(dir, "sha256"), 0o755))
	must(t, os.MkdirAll(filepath.Join(dir, "tmp"), 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "sha256", good.sha), good.data, 0o644))
	bad := append([]byte{}, corrupt.data...)
	bad[100] ^= 1
	must(t, os.WriteFile(filepath.Join(dir, "sha256", corrupt.sha), bad, 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "sha256", "not-a-hash"), nil, 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "tmp", corrupt.sha+"-123"), bad, 0o644))

	h := newCache(t, Options{Dir: dir})
	assertNoTemp(t, dir)
	if _, err := os.Stat(filepath.Join(dir, "sha256", "not-a-hash")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stray file kept: %v", err)
	}
	srv := httptest.NewServer(h.c.Handler())
	defer srv.Close()

	// The good file is verified on first use and served.
	if code, body := get(t, srv, "/images/sha256/"+good.sha); code != 200 || string(body) != string(good.data) {
		t.Fatalf("GET good: %d", code)
	}
	// The corrupted one is never served: removed and reported.
	if code, _ := get(t, srv, "/images/sha256/"+corrupt.sha); code != 404 {
		t.Fatalf("GET corrupted: %d, want 404", code)
	}
	if _, err := os.Stat(filepath.Join(dir, "sha256", corrupt.sha)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("corrupted file kept: %v", err)
	}
	if s := h.c.Status(corrupt.sha); s.State != Failed || !strings.Contains(s.Err, "corrupted") {
		t.Fatalf("status %+v", s)
	}
	if fetchCount(t, h, resultMismatch) != 1 {
		t.Fatal("corruption not counted")
	}
	if code, _ := get(t, srv, "/images/sha256/"+corrupt.sha); code != 404 {
		t.Fatalf("GET corrupted again: %d, want 404", code)
	}
	// Ensure fetches it again from the origin; then it is served.
	u := o.add("/c", corrupt.data)
	if _, err := h.c.Ensure(t.Context(), Artifact{URL: u, SHA256: corrupt.sha}); err != nil {
		t.Fatal(err)
	}
	if code, body := get(t, srv, "/images/sha256/"+corrupt.sha); code != 200 || string(body) != string(corrupt.data) {
		t.Fatalf("GET refetched: %d", code)
	}
	if v := testutil.ToFloat64(h.c.m.bytes); v != 40_000 {
		t.Fatalf("cache bytes %v, want 40000", v)
	}
	// A good file from an earlier run needs no origin.
	if _, err := h.c.Ensure(t.Context(), Artifact{URL: o.URL + "/none", SHA256: good.sha}); err != nil {
		t.Fatal(err)
	}
	if n := o.hits.Load(); n != 1 {
		t.Fatalf("origin requests %d, want 1", n)
	}
}

func TestCorruptedAtStartupEnsureRefetches(t *testing.T) {
	t.Parallel()
	o := newOrigin(t)
	b := newBlob(t, 20_000)
	dir := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(dir, "sha256"), 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "sha256", b.sha), b.data[:100], 0o644))
	h := newCache(t, Options{Dir: dir})
	e, err := h.c.Ensure(t.Context(), Artifact{URL: o.add("/b", b.data), SHA256: b.sha})
	if err != nil {
		t.Fatal(err)
	}
	if e.Size != int64(len(b.data)) || o.hits.Load() != 1 {
		t.Fatalf("entry %+v, origin requests %d", e, o.hits.Load())
	}
}
