package rack

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory/etcd"
	"github.com/kilnhq/kiln/inventory/etcdtest"
	"github.com/kilnhq/kiln/inventory/etcdtest/invtest"
	"github.com/kilnhq/kiln/netboot/cache"
	"github.com/kilnhq/kiln/netboot/httpsrv"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// bootServer is a rack agent's boot HTTP server (handler, middleware and
// hardened listener as the leader runs them) over an embedded etcd the
// test can stop, with the rack's view of inventoryDoc and one cached image.
type bootServer struct {
	agent    *Agent
	stopEtcd func() // once
	url      string
	image    string // /images/sha256/<hex>
	body     []byte
	reg      *prometheus.Registry
}

func startBootServer(t *testing.T, limits ...httpsrv.Options) *bootServer {
	t.Helper()
	cfg := etcd.Config{DataDir: t.TempDir(), ClientURL: "http://" + etcdtest.FreeAddr(t), PeerURL: "http://" + etcdtest.FreeAddr(t)}
	ctx := t.Context()
	e, err := etcd.StartEmbedded(ctx, cfg, quiet())
	if err != nil {
		t.Fatal(err)
	}
	stopEtcd := sync.OnceFunc(e.Close) // a second Close panics
	t.Cleanup(stopEtcd)
	cfg.Endpoints = []string{cfg.ClientURL}
	cli, err := etcd.Connect(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	inv := invtest.Load(t, inventoryDoc)
	store := invtest.Apply(t, cli, inv)
	reg := prometheus.NewRegistry()
	a := New(Config{Rack: "r1", ID: "boot-test", HTTPAddr: "unused", Cache: cache.Options{Dir: t.TempDir()},
		Powerer: nopPowerer{}, RequestTimeout: 2 * time.Second},
		store, reg, quiet())
	if a.cache == nil {
		t.Fatal("no image cache")
	}
	a.setView(viewOf("r1", inv, a.cfg.Boot), inv, 0)

	body := []byte("an image body, not a secret\n")
	sum := sha256.Sum256(body)
	src := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(src, body, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := a.cache.Ensure(ctx, cache.Artifact{URL: "file://" + src, SHA256: hex.EncodeToString(sum[:])}); err != nil {
		t.Fatal(err)
	}

	h, err := a.bootHandler()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	var o httpsrv.Options
	if len(limits) > 0 {
		o = limits[0]
	}
	stopped := a.serve(sctx, ln, h, o)
	t.Cleanup(func() { cancel(); <-stopped })
	return &bootServer{agent: a, stopEtcd: stopEtcd, url: "http://" + ln.Addr().String(), image: "/images/sha256/" + hex.EncodeToString(sum[:]), body: body, reg: reg}
}

// nopPowerer keeps the test from building a power executor it never uses.
type nopPowerer struct{ Powerer }

// clientFrom is an HTTP client whose connections leave from ip.
func clientFrom(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, Proxy: nil}, Timeout: 30 * time.Second}
}

func fetch(t *testing.T, c *http.Client, url string) (*http.Response, []byte) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// TestBootServerAnswers503WhenEtcdIsAway performs the failure of issue 12
// (7): etcd stops while the boot server runs. Script, agent-task and
// user-data requests answer 503 with Retry-After within 3 s instead of
// hanging.
func TestBootServerAnswers503WhenEtcdIsAway(t *testing.T) {
	b := startBootServer(t)
	c := clientFrom("127.0.0.1")
	paths := []string{
		"/boot/52:54:00:77:00:01/script.ipxe",
		"/agent/m1/task?token=not-checked-while-etcd-is-away",
		"/metadata/m1/user-data?token=not-checked-while-etcd-is-away",
	}
	// With etcd up the script is served (m1 has nothing to do: local boot).
	if resp, body := fetch(t, c, b.url+paths[0]); resp.StatusCode != http.StatusOK {
		t.Fatalf("script with etcd up: %s %s", resp.Status, body)
	}

	b.stopEtcd()
	for _, p := range paths {
		t0 := time.Now()
		resp, body := fetch(t, c, b.url+p)
		took := time.Since(t0)
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != retryAfter {
			t.Errorf("%s with etcd stopped: %s, Retry-After %q (%s), want 503 with Retry-After %s", p, resp.Status, resp.Header.Get("Retry-After"), body, retryAfter)
		}
		if took > 3*time.Second {
			t.Errorf("%s with etcd stopped answered after %s, want within 3s", p, took)
		}
		t.Logf("%s: %s after %s", p, resp.Status, took.Round(time.Millisecond))
	}
}

// TestImagesOnlyForTheRackSubnets: /images/ is served to an address on the
// rack's subnet (127.77.0.0/24 in inventoryDoc) and to the rack host, and
// refused with 403 to an address outside (127.0.0.2).
func TestImagesOnlyForTheRackSubnets(t *testing.T) {
	for _, ip := range []string{"127.0.0.2", "127.77.0.5"} {
		if l, err := net.Listen("tcp", ip+":0"); err != nil {
			t.Skipf("no loopback address %s: %v", ip, err)
		} else {
			l.Close()
		}
	}
	b := startBootServer(t)
	for _, ip := range []string{"127.77.0.5", "127.0.0.1"} {
		resp, body := fetch(t, clientFrom(ip), b.url+b.image)
		if resp.StatusCode != http.StatusOK || string(body) != string(b.body) {
			t.Errorf("image from %s: %s %q", ip, resp.Status, body)
		}
	}
	resp, body := fetch(t, clientFrom("127.0.0.2"), b.url+b.image)
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("image from 127.0.0.2 (off the rack's subnets): %s %q, want 403", resp.Status, body)
	}
	t.Logf("from 127.0.0.2: %s %s", resp.Status, body)
	want := "# HELP kiln_http_image_refused_total Image requests refused because the client was not on one of the rack's subnets (nor loopback).\n# TYPE kiln_http_image_refused_total counter\nkiln_http_image_refused_total 1\n"
	if err := testutil.GatherAndCompare(b.reg, strings.NewReader(want), "kiln_http_image_refused_total"); err != nil {
		t.Error(err)
	}
}

// TestBootServerClosesIdleConnections performs the attack of issue 12 (8)
// on the boot server: a keep-alive connection makes a request and goes
// idle; the server closes it after IdleTimeout (the read sees EOF).
func TestBootServerClosesIdleConnections(t *testing.T) {
	const idle = 300 * time.Millisecond
	b := startBootServer(t, httpsrv.Options{IdleTimeout: idle})
	c, err := net.Dial("tcp", strings.TrimPrefix(b.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	io.WriteString(c, "GET /boot/52:54:00:77:00:01/script.ipxe HTTP/1.1\r\nHost: rack\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Close {
		t.Fatalf("script: %s, close %v", resp.Status, resp.Close)
	}
	t0 := time.Now()
	c.SetReadDeadline(time.Now().Add(10 * time.Second)) // a guard, not the wait
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("idle keep-alive connection: read %v, want EOF (closed by the server)", err)
	}
	t.Logf("idle connection closed by the server after %s", time.Since(t0).Round(time.Millisecond))
}
