package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/etcdtest"
	"github.com/kilnhq/kiln/inventory/etcdtest/invtest"
	"github.com/kilnhq/kiln/spec/kilntest"
)

// syncBuffer is a bytes.Buffer safe to read while a command writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// kiln wait follows a machine through its phases, from etcd and through
// the API, shows each, and ends when the phase is reached; it gives up at
// its timeout with exit 1.
func TestWait(t *testing.T) {
	cli, _ := etcdtest.Start(t)
	store := invtest.Apply(t, cli, invtest.Load(t, testInventory))
	ctx := context.Background()
	put := func(phase, msg string) {
		b, _ := json.Marshal(inventory.MachineStatus{Phase: phase, Rack: "r1", Message: msg})
		if _, err := cli.Put(ctx, store.Keys().MachineStatus("vm-1"), string(b)); err != nil {
			t.Fatal(err)
		}
	}
	srv := startAPI(t, store)
	tok, _, _ := store.CreateAPIToken(ctx, "w", inventory.RoleViewer, 0, time.Now())
	for _, viaAPI := range []bool{false, true} {
		put("ready", "")
		args := []string{"wait", "machine", "vm-1", "--for", "phase=deployed", "--timeout", "1m"}
		if viaAPI {
			t.Setenv("KILN_SERVER", srv.URL)
			t.Setenv("KILN_TOKEN", tok)
			kilntest.Eventually(t, 10*time.Second, "the API's cache", func() bool {
				var o, e bytes.Buffer
				return run(ctx, []string{"get", "machines"}, &o, &e) == exitOK && strings.Contains(o.String(), "ready")
			})
		} else {
			t.Setenv("KILN_SERVER", "")
			args = append(args, "--etcd-endpoints", cli.Endpoints()[0])
		}
		out, errOut := &syncBuffer{}, &syncBuffer{}
		code := make(chan int, 1)
		go func() { code <- run(ctx, args, out, errOut) }()
		kilntest.Eventually(t, 10*time.Second, "the first status shown", func() bool { return strings.Contains(out.String(), "vm-1: ready") })
		put("deploying", "writing the image")
		kilntest.Eventually(t, 10*time.Second, "deploying shown", func() bool { return strings.Contains(out.String(), "writing the image") })
		put("deployed", "")
		select {
		case c := <-code:
			if c != exitOK || !strings.Contains(out.String(), "vm-1: phase=deployed after") {
				t.Errorf("api=%v: exit %d\n%s%s", viaAPI, c, out, errOut)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("api=%v: kiln wait did not end at deployed:\n%s%s", viaAPI, out, errOut)
		}
	}
	t.Setenv("KILN_SERVER", "")
	var o, e bytes.Buffer
	c := run(ctx, []string{"wait", "machine", "vm-2", "--for", "phase=deployed", "--timeout", "300ms", "--etcd-endpoints", cli.Endpoints()[0]}, &o, &e)
	if c != exitFail || !strings.Contains(e.String(), "no phase=deployed within 300ms") {
		t.Errorf("timeout: exit %d %q", c, e.String())
	}
	if c := run(ctx, []string{"wait", "machine", "vm-2", "--for", "deployed"}, &o, &e); c != exitUsage {
		t.Errorf("--for deployed: exit %d", c)
	}
}
