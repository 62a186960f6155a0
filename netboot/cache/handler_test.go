package cache

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/spec/kilntest"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// readyCache returns a cache holding b and an HTTP server on loopback
// serving its handler.
func readyCache(t testing.TB, b blob, o Options) (harness, *httptest.Server) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "src")
	must(t, os.WriteFile(p, b.data, 0o644))
	h := newCache(t, o)
	if _, err := h.c.Ensure(t.Context(), Artifact{URL: "file://" + p, SHA256: b.sha}); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h.c.Handler())
	t.Cleanup(srv.Close)
	return h, srv
}

func requireCurl(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("curl"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("curl is not installed; .ci/run should have installed it")
		}
		t.Skip("curl is not installed (apt-get install curl)")
	}
}

func curl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), "curl", append([]string{"-sS", "--fail", "--noproxy", "*"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("curl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestCurl(t *testing.T) {
	t.Parallel()
	requireCurl(t)
	b := newBlob(t, 3<<20+17)
	h, srv := readyCache(t, b, Options{})
	u := srv.URL + "/images/sha256/" + b.sha
	dir := t.TempDir()

	// A range.
	part := filepath.Join(dir, "part")
	curl(t, "-r", "0-99", "-o", part, u)
	got, _ := os.ReadFile(part)
	if !bytes.Equal(got, b.data[:100]) {
		t.Fatalf("range 0-99: %d bytes, not the first 100", len(got))
	}
	curl(t, "-r", "1000-", "-o", part, u+"/vmlinuz")
	got, _ = os.ReadFile(part)
	if !bytes.Equal(got, b.data[1000:]) {
		t.Fatalf("range 1000-: %d bytes", len(got))
	}

	// Headers only.
	head := curl(t, "-I", u)
	for _, want := range []string{"HTTP/1.1 200", fmt.Sprintf("Content-Length: %d", len(b.data)), "Accept-Ranges: bytes", "Last-Modified:", `Etag: "sha256:` + b.sha} {
		if !strings.Contains(strings.ToLower(head), strings.ToLower(want)) {
			t.Errorf("curl -I: no %q in\n%s", want, head)
		}
	}

	// The whole file, checked with sha256sum.
	full := filepath.Join(dir, "full")
	curl(t, "-o", full, u)
	out, err := exec.CommandContext(t.Context(), "sha256sum", full).Output()
	if err != nil {
		t.Fatal(err)
	}
	if sum, _, _ := strings.Cut(string(out), " "); sum != b.sha {
		t.Fatalf("sha256sum %s, want %s", sum, b.sha)
	}

	// Conditional GET: not modified.
	code := curl(t, "-o", "/dev/null", "-w", "%{http_code}", "-H", "If-None-Match: \"sha256:"+b.sha+"\"", u)
	if code != "304" {
		t.Fatalf("If-None-Match: %s, want 304", code)
	}

	want := float64(100 + len(b.data) - 1000 + len(b.data))
	if v := testutil.ToFloat64(h.c.m.served); v != want {
		t.Fatalf("boot bytes %v, want %v", v, want)
	}
}

// holdTransfer starts a GET of a file too large for the socket buffers,
// reads one byte of its body and stops reading: the handler holds its
// transfer slot until release is called.
func holdTransfer(t *testing.T, srv *httptest.Server, path string) (release func() int) {
	t.Helper()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("first transfer: %s", resp.Status)
	}
	one := make([]byte, 1)
	if _, err := resp.Body.Read(one); err != nil {
		t.Fatal(err)
	}
	return func() int {
		var buf bytes.Buffer
		n, err := buf.ReadFrom(resp.Body)
		if err != nil {
			t.Errorf("first transfer: %v", err)
		}
		return int(n) + 1
	}
}

func TestQueueWaitsForASlot(t *testing.T) {
	t.Parallel()
	b := newBlob(t, 32<<20)
	h, srv := readyCache(t, b, Options{MaxServes: 1, QueueTimeout: time.Minute})
	path := "/images/sha256/" + b.sha
	release := holdTransfer(t, srv, path)

	type result struct {
		code int
		n    int
		err  error
	}
	second := make(chan result, 1)
	go func() {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			second <- result{err: err}
			return
		}
		defer resp.Body.Close()
		var buf bytes.Buffer
		n, err := buf.ReadFrom(resp.Body)
		second <- result{resp.StatusCode, int(n), err}
	}()
	kilntest.Eventually(t, 10*time.Second, "one request queued", func() bool { return testutil.ToFloat64(h.c.m.queue) == 1 })
	// HEAD needs no transfer slot.
	resp, err := http.Head(srv.URL + path)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("HEAD while queued: %v %v", resp, err)
	}
	if n := release(); n != len(b.data) {
		t.Fatalf("first transfer: %d bytes", n)
	}
	r := <-second
	if r.err != nil || r.code != 200 || r.n != len(b.data) {
		t.Fatalf("queued transfer: %+v, want 200 and the whole file", r)
	}
	if v := testutil.ToFloat64(h.c.m.queue); v != 0 {
		t.Fatalf("queue %v after", v)
	}
}

func TestQueueTimeout(t *testing.T) {
	t.Parallel()
	b := newBlob(t, 32<<20)
	h, srv := readyCache(t, b, Options{MaxServes: 1, QueueTimeout: 20 * time.Millisecond})
	path := "/images/sha256/" + b.sha
	release := holdTransfer(t, srv, path)

	resp, err := http.Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("queued past the timeout: %s, Retry-After %q; want 503 with Retry-After", resp.Status, resp.Header.Get("Retry-After"))
	}
	if n := release(); n != len(b.data) {
		t.Fatalf("first transfer: %d bytes", n)
	}
	// The slot is free again.
	code, body := get(t, srv, path)
	if code != 200 || len(body) != len(b.data) {
		t.Fatalf("after: %d, %d bytes", code, len(body))
	}
	if v := testutil.ToFloat64(h.c.m.queue); v != 0 {
		t.Fatalf("queue %v after", v)
	}
}

func TestMethodNotAllowed(t *testing.T) {
	t.Parallel()
	b := newBlob(t, 10)
	_, srv := readyCache(t, b, Options{})
	resp, err := http.Post(srv.URL+"/images/sha256/"+b.sha, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %s", resp.Status)
	}
}

func TestRequestWaitsForAFetch(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		timeout time.Duration
		code    int
	}{
		"waits":    {time.Minute, http.StatusOK},
		"too long": {20 * time.Millisecond, http.StatusServiceUnavailable},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			o := newOrigin(t)
			b := newBlob(t, 1000)
			u := o.add("/k", b.data)
			gate := make(chan struct{})
			o.gate = gate
			h := newCache(t, Options{QueueTimeout: tc.timeout})
			srv := httptest.NewServer(h.c.Handler())
			defer srv.Close()
			fetched := make(chan error, 1)
			go func() {
				_, err := h.c.Ensure(t.Context(), Artifact{URL: u, SHA256: b.sha})
				fetched <- err
			}()
			kilntest.Eventually(t, 10*time.Second, "the origin to be hit once", func() bool { return o.hits.Load() == 1 })
			type result struct {
				code  int
				retry string
				body  []byte
			}
			got := make(chan result, 1)
			go func() {
				resp, err := http.Get(srv.URL + "/images/sha256/" + b.sha)
				if err != nil {
					got <- result{}
					return
				}
				defer resp.Body.Close()
				var buf bytes.Buffer
				buf.ReadFrom(resp.Body)
				got <- result{resp.StatusCode, resp.Header.Get("Retry-After"), buf.Bytes()}
			}()
			if tc.code == http.StatusOK {
				kilntest.Eventually(t, 10*time.Second, "the second caller to wait on the flight", func() bool {
					h.c.mu.Lock()
					defer h.c.mu.Unlock()
					return h.c.entries[b.sha].flight.waiters == 1
				})
				close(gate)
			}
			r := <-got
			if r.code != tc.code {
				t.Fatalf("GET during the fetch: %d, want %d", r.code, tc.code)
			}
			if tc.code == http.StatusOK && !bytes.Equal(r.body, b.data) {
				t.Fatal("body differs")
			}
			if tc.code == http.StatusServiceUnavailable {
				if r.retry == "" {
					t.Fatal("503 without Retry-After")
				}
				close(gate)
			}
			if err := <-fetched; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// clientFrom is an HTTP client whose connections leave from ip.
func clientFrom(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, Proxy: nil}}
}

// TestRestrictedHandler: /images/ is served to the addresses allow
// accepts (the rack's subnets) and refused with 403 to others: a client at
// 127.0.0.2 stands for a host outside the rack's subnets.
func TestRestrictedHandler(t *testing.T) {
	for _, ip := range []string{"127.0.0.2", "127.0.0.3"} {
		if c, err := net.Listen("tcp", ip+":0"); err != nil {
			t.Skipf("no loopback address %s: %v", ip, err)
		} else {
			c.Close()
		}
	}
	b := newBlob(t, 100_000)
	h, _ := readyCache(t, b, Options{})
	subnet := netip.MustParsePrefix("127.0.0.3/32")
	srv := httptest.NewServer(h.c.RestrictedHandler(subnet.Contains))
	t.Cleanup(srv.Close)
	u := srv.URL + "/images/sha256/" + b.sha

	resp, err := clientFrom("127.0.0.3").Get(u)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, b.data) {
		t.Fatalf("client on the subnet: %s, %d bytes", resp.Status, len(got))
	}

	resp, err = clientFrom("127.0.0.2").Get(u)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(msg), "127.0.0.2 is not on one") {
		t.Fatalf("client off the subnets: %s %q, want 403 saying why", resp.Status, msg)
	}
	if n := testutil.ToFloat64(h.c.m.refused); n != 1 {
		t.Errorf("kiln_http_image_refused_total %v, want 1", n)
	}
}
