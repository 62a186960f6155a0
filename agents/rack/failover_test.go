package rack

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/etcd"
	"github.com/kilnhq/kiln/inventory/etcdtest"
	"github.com/kilnhq/kiln/inventory/etcdtest/invtest"
	"github.com/kilnhq/kiln/netboot/boot"
	"github.com/kilnhq/kiln/netboot/dhcp"
	"github.com/kilnhq/kiln/spec/kilntest"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// role is one change of an agent's role, heard through Agent.onRole.
type role struct {
	agent   string
	leading bool
}

// listeners keeps the boot servers' TCP listeners each agent opened.
type listeners struct {
	mu  sync.Mutex
	ids map[string][]net.Listener
}

func (l *listeners) of(id string) []net.Listener {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ids[id]
}

// startServingAgent runs an agent with an HTTP boot server on loopback,
// reporting its roles on roles and keeping its listeners in lns.
func startServingAgent(t *testing.T, cfg etcd.Config, id string, roles chan<- role, lns *listeners) *Agent {
	t.Helper()
	cli, err := etcd.Connect(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a := New(Config{Rack: "r1", ID: id, TTL: 2 * time.Second,
		DHCP:     dhcp.Options{Interfaces: []string{"lo"}, Port: freeUDPPort(t), ProxyPort: -1},
		HTTPAddr: "127.0.0.1:0", BootHTTP: boot.Options{BaseURL: "http://127.0.0.1:1"}, Powerer: nopPowerer{}},
		inventory.NewStore(cli, "", quiet()), prometheus.NewRegistry(), quiet())
	a.onRole = func(on bool) { roles <- role{id, on} }
	a.listen = func(network, addr string) (net.Listener, error) {
		ln, err := net.Listen(network, addr)
		if err == nil {
			lns.mu.Lock()
			lns.ids[id] = append(lns.ids[id], ln)
			lns.mu.Unlock()
		}
		return ln, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent %s: %v", id, err)
		}
		cli.Close()
	})
	return a
}

func nextRole(t *testing.T, roles <-chan role) role {
	t.Helper()
	select {
	case r := <-roles:
		return r
	case <-time.After(30 * time.Second):
		t.Fatal("no change of role within 30s")
		return role{}
	}
}

// TestLeaderWhoseBootServerDiesHandsOver: when the leader's HTTP boot
// server dies (its listener closed under it), its term ends and the
// standby becomes the rack leader.
func TestLeaderWhoseBootServerDiesHandsOver(t *testing.T) {
	cli, cfg := etcdtest.Start(t)
	store := invtest.Apply(t, cli, invtest.Load(t, inventoryDoc))
	roles := make(chan role, 16)
	lns := &listeners{ids: map[string][]net.Listener{}}

	startServingAgent(t, cfg, "a", roles, lns)
	if r := nextRole(t, roles); r != (role{"a", true}) {
		t.Fatalf("first role change %+v, want a leading", r)
	}
	// Start the standby and wait until its campaign key is in etcd.
	cur, err := cli.Get(context.Background(), "x")
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	wch := cli.Watch(wctx, store.Keys().RackElection("r1"), clientv3.WithPrefix(), clientv3.WithRev(cur.Header.Revision+1))
	b := startServingAgent(t, cfg, "b", roles, lns)
	campaigning := false
	for wr := range wch {
		for _, ev := range wr.Events {
			campaigning = campaigning || ev.Type == clientv3.EventTypePut && string(ev.Kv.Value) == "b"
		}
		if campaigning {
			break
		}
	}
	wcancel()
	if err := b.Ready(); err != nil {
		t.Errorf("a standby with its view loaded is not ready: %v", err)
	}

	dying := lns.of("a")
	if len(dying) != 1 {
		t.Fatalf("leader a opened %d listeners, want its HTTP boot listener", len(dying))
	}
	start := time.Now()
	dying[0].Close()
	if r := nextRole(t, roles); r != (role{"a", false}) {
		t.Fatalf("after a's HTTP server died: %+v, want a stepping down", r)
	}
	if r := nextRole(t, roles); r != (role{"b", true}) {
		t.Fatalf("after a stepped down: %+v, want b leading", r)
	}
	t.Logf("b took over %s after a's HTTP boot server died", time.Since(start))
	// The role changes when the term starts; the servers open after it.
	kilntest.Eventually(t, 10*time.Second, "the new leader's HTTP boot listener", func() bool { return len(lns.of("b")) >= 1 })
	if n := len(lns.of("b")); n != 1 {
		t.Errorf("the new leader opened %d listeners, want 1", n)
	}
}
