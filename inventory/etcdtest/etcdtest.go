// Package etcdtest starts a real embedded etcd for tests.
package etcdtest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory/etcd"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Start runs a single-node etcd in t.TempDir() on free loopback ports and
// returns a client; both stop when the test ends.
func Start(t testing.TB) (*clientv3.Client, etcd.Config) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		cfg := etcd.Config{
			DataDir:   t.TempDir(),
			ClientURL: "http://" + FreeAddr(t),
			PeerURL:   "http://" + FreeAddr(t),
		}
		e, err := etcd.StartEmbedded(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			lastErr = err // most likely a port taken in between: try others
			continue
		}
		t.Cleanup(e.Close)
		cfg.Endpoints = []string{cfg.ClientURL}
		cli, err := etcd.Connect(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Close() })
		return cli, cfg
	}
	t.Fatalf("start embedded etcd: %v", lastErr)
	return nil, etcd.Config{}
}

// FreeAddr returns a loopback address with a port that was free just now.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(fmt.Errorf("free port: %w", err))
	}
	defer l.Close()
	return l.Addr().String()
}
