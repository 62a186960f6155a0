package reconciler_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kilnhq/kiln/reconciler"
	"github.com/prometheus/client_golang/prometheus"
)

// recorder keeps every record a logger writes, attributes flattened.
type recorder struct {
	mu     sync.Mutex
	recs   []map[string]string
	attrs  []slog.Attr
	parent *recorder
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) WithGroup(string) slog.Handler            { return r }
func (r *recorder) WithAttrs(as []slog.Attr) slog.Handler {
	return &recorder{attrs: append(append([]slog.Attr(nil), r.attrs...), as...), parent: r}
}

func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	m := map[string]string{"msg": rec.Message}
	for _, a := range r.attrs {
		m[a.Key] = a.Value.String()
	}
	rec.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
	root := r
	for root.parent != nil {
		root = root.parent
	}
	root.mu.Lock()
	root.recs = append(root.recs, m)
	root.mu.Unlock()
	return nil
}

// Every line the region logs about a machine carries the machine
// attribute, so that `jq 'select(.machine=="m-beta")'` finds them all.
func TestLogLinesNameTheirMachine(t *testing.T) {
	e := newEnv(t)
	e.sim.failures["m-beta"] = 1
	machines := map[string]string{"m-alpha": "state: deployed", "m-beta": "state: ready", "m-gamma": "state: ready"}
	e.apply(lab(t, machines), "r1")
	rec := &recorder{}
	r := reconciler.New(reconciler.Config{ID: "region-1", Policy: testPolicy}, e.store, prometheus.NewRegistry(), slog.New(rec))
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	e.waitPhase("m-alpha", "deployed", time.Minute)
	e.waitPhase("m-beta", "ready", time.Minute)
	e.waitPhase("m-gamma", "ready", time.Minute)
	cancel()
	<-done

	rec.mu.Lock()
	defer rec.mu.Unlock()
	about := 0
	for _, m := range rec.recs {
		for _, name := range []string{"m-alpha", "m-beta", "m-gamma"} {
			mentioned := false
			for k, v := range m {
				if k != "machine" && strings.Contains(v, name) {
					mentioned = true
				}
			}
			if m["machine"] == name {
				about++
				continue
			}
			if mentioned && m["machine"] == "" {
				t.Errorf("a line about %s has no machine attribute: %v", name, m)
			}
		}
	}
	if about < 6 {
		t.Fatalf("only %d lines about the machines: %s", about, fmt.Sprint(rec.recs))
	}
}
