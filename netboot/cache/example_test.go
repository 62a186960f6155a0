package cache_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"

	"github.com/kilnhq/kiln/netboot/cache"
	"github.com/prometheus/client_golang/prometheus"
)

// A rack agent stages an Image's artifacts when it appears, publishes
// their Status, and serves them to booting machines.
func Example() {
	dir, _ := os.MkdirTemp("", "kiln-cache")
	defer os.RemoveAll(dir)
	kernel := []byte("not really a kernel")
	src := filepath.Join(dir, "vmlinuz")
	os.WriteFile(src, kernel, 0o644)
	sum := sha256.Sum256(kernel)
	sha := hex.EncodeToString(sum[:])

	c, err := cache.New(cache.Options{Dir: filepath.Join(dir, "cache")}, cache.NewMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler))
	if err != nil {
		fmt.Println(err)
		return
	}
	<-c.Stage(context.Background(), []cache.Artifact{{URL: "file://" + src, SHA256: sha}})
	fmt.Println(c.Status(sha).State, c.Status(sha).Bytes)

	srv := httptest.NewServer(c.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/images/sha256/" + sha + "/vmlinuz")
	if err != nil {
		fmt.Println(err)
		return
	}
	resp.Body.Close()
	fmt.Println(resp.Status, resp.ContentLength)
	// Output:
	// ready 19
	// 200 OK 19
}
