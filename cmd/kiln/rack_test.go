package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory/etcdtest"
	"github.com/kilnhq/kiln/inventory/etcdtest/invtest"
	"github.com/kilnhq/kiln/spec/kilntest"
)

const rackDoc = `
apiVersion: kiln.dev/v1alpha1
kind: Rack
metadata: {name: r1}
---
apiVersion: kiln.dev/v1alpha1
kind: Subnet
metadata: {name: relayed}
spec: {cidr: 127.77.0.0/24, rack: r1, mode: relay, gateway: 127.77.0.1}
`

// startRack runs `kiln rack` against endpoints, serving TFTP and HTTP boot
// on loopback; it returns the --listen address, the log and the exit code.
func startRack(t *testing.T, ctx context.Context, endpoints string, logs io.Writer) (string, <-chan int) {
	t.Helper()
	listen := etcdtest.FreeAddr(t)
	u, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := u.LocalAddr().(*net.UDPAddr).Port
	u.Close()
	code := make(chan int, 1)
	go func() {
		code <- run(ctx, []string{"rack", "--rack", "r1", "--etcd-endpoints", endpoints, "--listen", listen,
			"--interfaces", "lo", "--dhcp-port", fmt.Sprint(port), "--proxy-port", "-1",
			"--http", "127.0.0.1:0", "--tftp", "127.0.0.1:0", "--tftp-root", t.TempDir(), "--ipxe-dir", ""}, &bytes.Buffer{}, logs)
	}()
	return listen, code
}

// get returns the status and body of GET url, waiting for the listener.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	var resp *http.Response
	kilntest.Eventually(t, 30*time.Second, "GET "+url, func() bool {
		var err error
		resp, err = http.Get(url)
		return err == nil
	})
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b)
}

// TestRackHealthReadyAndDrain: kiln rack serves /healthz always and
// /readyz once it leads; it stops within 2s of its context ending,
// logging it.
func TestRackHealthReadyAndDrain(t *testing.T) {
	cli, cfg := etcdtest.Start(t)
	invtest.Apply(t, cli, invtest.Load(t, rackDoc))
	logs := &logWatch{want: "leading the rack", seen: make(chan struct{})}
	seen := logs.seen
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	listen, code := startRack(t, ctx, cfg.ClientURL, logs)
	logs.wait(t, seen, code)
	for _, path := range []string{"/healthz", "/readyz"} {
		if status, body := get(t, "http://"+listen+path); status != http.StatusOK || body != "ok\n" {
			t.Errorf("GET %s: %d %q", path, status, body)
		}
	}

	logs.stopsWithin2s(t, cancel, code, `"http stopped"`, `"rack agent stopped"`)
}

// TestRackNotReadyWithoutView: a rack agent that cannot reach etcd is
// alive (/healthz 200) but not ready (/readyz 503 with the reason).
func TestRackNotReadyWithoutView(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	listen, code := startRack(t, ctx, "http://"+etcdtest.FreeAddr(t), io.Discard)
	if status, _ := get(t, "http://"+listen+"/healthz"); status != http.StatusOK {
		t.Errorf("GET /healthz: %d", status)
	}
	status, body := get(t, "http://"+listen+"/readyz")
	if status != http.StatusServiceUnavailable || body != "the rack view is not loaded yet\n" {
		t.Errorf("GET /readyz: %d %q, want 503 with the reason", status, body)
	}
	cancel()
	<-code
}
