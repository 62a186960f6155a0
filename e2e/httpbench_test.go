//go:build e2e

package e2e

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kilnhq/kiln/e2e/netlab"
	"github.com/kilnhq/kiln/netboot/cache"
	"github.com/prometheus/client_golang/prometheus"
)

const (
	httpBenchSize    = 64 << 20
	httpBenchClients = 100
)

// BenchmarkHTTPImage measures a boot storm's image transfers: 100 clients
// at once each download the same 64 MB image, first from Kiln's image
// cache handler (netboot/cache, default MaxServes 32, so most requests
// queue) and then from nginx (sendfile on) serving the very same file,
// one after the other in the same run, both on 127.0.0.1. The client is Go:
// 100 goroutines, one connection each, reading and discarding bodies. It
// reports each server's total time, failures (an error, a status other
// than 200 or a short body) and throughput, and the ratio of Kiln's time
// to nginx's (below 1: Kiln faster).
//
// Run it with `make bench-http` (go test -tags e2e -run '^$' -bench
// BenchmarkHTTPImage -benchtime 1x ./e2e/) on an otherwise idle machine:
// the client and the server share the two cores.
func BenchmarkHTTPImage(b *testing.B) {
	netlab.RequireBinary(b, "nginx")
	dir := b.TempDir()
	data := make([]byte, httpBenchSize)
	rand.Read(data)
	sum := sha256.Sum256(data)
	sha := hex.EncodeToString(sum[:])
	src := filepath.Join(dir, "image.raw")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		b.Fatal(err)
	}
	data = nil

	cacheDir := filepath.Join(dir, "cache")
	c, err := cache.New(cache.Options{Dir: cacheDir}, cache.NewMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := c.Ensure(b.Context(), cache.Artifact{URL: "file://" + src, SHA256: sha}); err != nil {
		b.Fatal(err)
	}
	kilnURL := startKilnHTTP(b, c.Handler()) + "/images/sha256/" + sha
	// nginx serves the same file from the cache folder.
	nginxURL := startNginx(b, cacheDir) + "/sha256/" + sha

	for range b.N {
		k := httpStorm(b, kilnURL)
		n := httpStorm(b, nginxURL)
		b.Logf("kiln:  %v, %d failures, %.0f MB/s", k.took.Round(time.Millisecond), k.failures, k.mbps())
		b.Logf("nginx: %v, %d failures, %.0f MB/s", n.took.Round(time.Millisecond), n.failures, n.mbps())
		b.ReportMetric(k.took.Seconds(), "kiln-s")
		b.ReportMetric(float64(k.failures), "kiln-failures")
		b.ReportMetric(k.mbps(), "kiln-MB/s")
		b.ReportMetric(n.took.Seconds(), "nginx-s")
		b.ReportMetric(float64(n.failures), "nginx-failures")
		b.ReportMetric(n.mbps(), "nginx-MB/s")
		b.ReportMetric(k.took.Seconds()/n.took.Seconds(), "kiln/nginx-time")
	}
}

type stormResult struct {
	took     time.Duration
	failures int
	bytes    int64
}

func (r stormResult) mbps() float64 { return float64(r.bytes) / 1e6 / r.took.Seconds() }

// httpStorm downloads u from httpBenchClients goroutines at once.
func httpStorm(b *testing.B, u string) stormResult {
	tr := &http.Transport{
		MaxIdleConnsPerHost: httpBenchClients,
		DisableCompression:  true,
		Proxy:               nil,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Minute}
	var (
		wg       sync.WaitGroup
		failures atomic.Int64
		total    atomic.Int64
		firstErr sync.Once
	)
	fail := func(err error) {
		failures.Add(1)
		firstErr.Do(func() { b.Logf("%s: first failure: %v", u, err) })
	}
	start := time.Now()
	for range httpBenchClients {
		wg.Go(func() {
			resp, err := client.Get(u)
			if err != nil {
				fail(err)
				return
			}
			defer resp.Body.Close()
			n, err := io.Copy(io.Discard, resp.Body)
			total.Add(n)
			switch {
			case err != nil:
				fail(err)
			case resp.StatusCode != http.StatusOK:
				fail(fmt.Errorf("status %s", resp.Status))
			case n != httpBenchSize:
				fail(fmt.Errorf("%d bytes, want %d", n, httpBenchSize))
			}
		})
	}
	wg.Wait()
	return stormResult{time.Since(start), int(failures.Load()), total.Load()}
}

// startKilnHTTP serves h on 127.0.0.1 until the benchmark ends.
func startKilnHTTP(b *testing.B, h http.Handler) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			b.Errorf("kiln http: %v", err)
		}
	})
	return "http://" + ln.Addr().String()
}

// startNginx runs nginx in the foreground (its own prefix, config, logs and
// temp folders; never the system service) on a free loopback port with
// sendfile on, serving root, and stops it when the benchmark ends.
func startNginx(b *testing.B, root string) string {
	prefix := b.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;" // the temp folders are root's, mode 0700
	}
	conf := fmt.Sprintf(`%s
worker_processes auto;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log warn;
events { worker_connections 4096; }
http {
	access_log off;
	sendfile on;
	tcp_nopush on;
	keepalive_timeout 65;
	client_body_temp_path %[2]s/body;
	proxy_temp_path %[2]s/proxy;
	fastcgi_temp_path %[2]s/fastcgi;
	uwsgi_temp_path %[2]s/uwsgi;
	scgi_temp_path %[2]s/scgi;
	default_type application/octet-stream;
	server {
		listen %[3]s;
		root %[4]s;
		location / { }
	}
}
`, user, prefix, addr, root)
	confPath := filepath.Join(prefix, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command("nginx", "-c", confPath, "-p", prefix, "-e", filepath.Join(prefix, "error.log"), "-g", "daemon off;")
	out, err := os.Create(filepath.Join(prefix, "stdout"))
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	var waitErr error
	exited := make(chan struct{})
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	b.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGQUIT) // graceful: the master stops its workers
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	base := "http://" + addr
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-exited:
			log, _ := os.ReadFile(filepath.Join(prefix, "error.log"))
			stdout, _ := os.ReadFile(filepath.Join(prefix, "stdout"))
			b.Fatalf("nginx exited: %v\n%s%s", waitErr, stdout, log)
		default:
		}
		resp, err := http.Head(base + "/")
		if err == nil {
			resp.Body.Close()
			return base
		}
		if time.Now().After(deadline) {
			b.Fatalf("nginx not answering on %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
