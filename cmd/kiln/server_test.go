package main

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory/etcdtest"
	"github.com/kilnhq/kiln/spec/kilntest"
)

// logWatch is a log writer that closes seen once the log holds want.
type logWatch struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want string
	seen chan struct{}
}

func (l *logWatch) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.buf.Write(p)
	if l.seen != nil && strings.Contains(l.buf.String(), l.want) {
		close(l.seen)
		l.seen = nil
	}
	return n, err
}

func (l *logWatch) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// TestServerDrainsWithin2s: kiln server (embedded etcd, the lab
// inventory) serves /healthz and /readyz, and stops within 2s of its
// context ending, logging each component's stop.
func TestServerDrainsWithin2s(t *testing.T) {
	listen, apiAddr, etcdAddr := etcdtest.FreeAddr(t), etcdtest.FreeAddr(t), etcdtest.FreeAddr(t)
	logs := &logWatch{want: "became the region leader", seen: make(chan struct{})}
	seen := logs.seen
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	code := make(chan int, 1)
	go func() {
		code <- run(ctx, []string{"server", "--source", "../../examples/lab", "--data-dir", t.TempDir(),
			"--etcd-listen-client", "http://" + etcdAddr, "--etcd-listen-peer", "http://" + etcdtest.FreeAddr(t),
			"--listen", listen, "--api", apiAddr}, &bytes.Buffer{}, logs)
	}()
	logs.wait(t, seen, code)
	checkAPI(t, apiAddr, etcdAddr)
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get("http://" + listen + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %d", path, resp.StatusCode)
		}
	}

	logs.stopsWithin2s(t, cancel, code, `"http stopped"`, `"api stopped"`, `"region stopped"`, `"etcd client closed"`, `"embedded etcd stopped"`)
}

// checkAPI: the region API answers 401 without a token and serves a
// token made by kiln token create; kiln token list shows it, revoked.
func checkAPI(t *testing.T, apiAddr, etcdAddr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	if c := run(context.Background(), []string{"token", "create", "--name", "ci", "--role", "viewer", "--etcd-endpoints", "http://" + etcdAddr}, &out, &errOut); c != exitOK {
		t.Fatalf("kiln token create: %d %s", c, errOut.String())
	}
	token := strings.TrimSpace(out.String())
	get := func(tok string) int {
		req, _ := http.NewRequest("GET", "http://"+apiAddr+"/api/v1/machines", nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := get(""); c != http.StatusUnauthorized {
		t.Errorf("no token: %d", c)
	}
	kilntest.Eventually(t, 10*time.Second, "the token admitted", func() bool { return get(token) == http.StatusOK })
	out.Reset()
	if c := run(context.Background(), []string{"token", "revoke", "ci", "--etcd-endpoints", "http://" + etcdAddr}, &out, &errOut); c != exitOK {
		t.Fatalf("kiln token revoke: %d %s", c, errOut.String())
	}
	kilntest.Eventually(t, time.Second, "the revoked token refused", func() bool { return get(token) == http.StatusUnauthorized })
	out.Reset()
	run(context.Background(), []string{"token", "list", "--etcd-endpoints", "http://" + etcdAddr}, &out, &errOut)
	if !strings.Contains(out.String(), "ci ") || !strings.Contains(out.String(), "revoked") || strings.Contains(out.String(), token) {
		t.Errorf("kiln token list:\n%s", out.String())
	}
}

func TestAPIFlags(t *testing.T) {
	for _, c := range []struct {
		addr, cert, key string
		ok              bool
	}{
		{"", "", "", true}, {"127.0.0.1:9443", "", "", true}, {"[::1]:9443", "", "", true}, {"localhost:9443", "", "", true},
		{"0.0.0.0:9443", "", "", false}, {"10.0.0.1:9443", "", "", false}, {":9443", "", "", false},
		{"0.0.0.0:9443", "c.pem", "k.pem", true}, {"0.0.0.0:9443", "c.pem", "", false}, {"nonsense", "", "", false},
	} {
		if err := checkAPIFlags(c.addr, c.cert, c.key); (err == nil) != c.ok {
			t.Errorf("%q %q %q: %v", c.addr, c.cert, c.key, err)
		}
	}
}

// wait waits for the log line of l.want (closing seen) while the command
// runs.
func (l *logWatch) wait(t *testing.T, seen <-chan struct{}, code <-chan int) {
	t.Helper()
	select {
	case <-seen:
	case c := <-code:
		t.Fatalf("exited with %d before logging %q:\n%s", c, l.want, l)
	case <-time.After(60 * time.Second):
		t.Fatalf("no %q within 60s:\n%s", l.want, l)
	}
}

// stopsWithin2s cancels the command and checks that it exits 0 within
// 2s, having logged each of lines.
func (l *logWatch) stopsWithin2s(t *testing.T, cancel context.CancelFunc, code <-chan int, lines ...string) {
	t.Helper()
	start := time.Now()
	cancel()
	select {
	case c := <-code:
		if c != exitOK {
			t.Errorf("exit code %d:\n%s", c, l)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("still running 10s after cancel:\n%s", l)
	}
	t.Logf("stopped %s after cancel", time.Since(start))
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %s to stop, want under 2s", d)
	}
	for _, line := range lines {
		if !strings.Contains(l.String(), line) {
			t.Errorf("no %s in the log:\n%s", line, l)
		}
	}
}
