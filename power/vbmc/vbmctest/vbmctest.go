// Package vbmctest starts in-process virtual BMCs for tests, the way
// net/http/httptest starts servers: on free ports of 127.0.0.1, stopped
// when the test ends.
//
//	m := vbmc.NewMemory()
//	b := vbmctest.Start(t, m)
//	// b.IPMIAddr(), b.RedfishURL(), b.RedfishTLSURL(), b.CertPool()
//	// log in as vbmctest.Username / vbmctest.Password
package vbmctest

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/kilnhq/kiln/power/vbmc"
)

// The credentials Start configures unless an option changes them.
const (
	Username = "admin"
	Password = "kiln-vbmc-pw"
)

// Start runs a virtual BMC for m with IPMI, Redfish over HTTP and Redfish
// over HTTPS (a self-signed certificate) on free ports of 127.0.0.1, and
// stops it when the test ends. A nil m is a new vbmc.Memory. Options edit
// the configuration before it is used (e.g. set Faults or SessionTimeout,
// or clear an address to leave that endpoint out).
func Start(t testing.TB, m vbmc.Machine, opts ...func(*vbmc.Config)) *vbmc.BMC {
	t.Helper()
	if m == nil {
		m = vbmc.NewMemory()
	}
	cfg := vbmc.Config{
		Name:           "vm-1",
		Username:       Username,
		Password:       Password,
		IPMIAddr:       "127.0.0.1:0",
		RedfishAddr:    "127.0.0.1:0",
		RedfishTLSAddr: "127.0.0.1:0",
	}
	tw := &testWriter{t: t}
	cfg.Logger = slog.New(slog.NewTextHandler(tw, &slog.HandlerOptions{Level: slog.LevelDebug}))
	for _, o := range opts {
		o(&cfg)
	}
	b, err := vbmc.New(cfg, m)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("virtual BMC: %v", err)
		}
		tw.mu.Lock()
		tw.over = true
		tw.mu.Unlock()
	})
	return b
}

// testWriter sends the BMC's log to t.Log, so it shows with failures and
// -v only; nothing after the BMC stopped (t.Log would panic).
type testWriter struct {
	t    testing.TB
	mu   sync.Mutex
	over bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.over {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}
