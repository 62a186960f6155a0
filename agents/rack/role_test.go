package rack

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/etcd"
	"github.com/kilnhq/kiln/inventory/etcdtest"
	"github.com/kilnhq/kiln/inventory/etcdtest/invtest"
	"github.com/kilnhq/kiln/netboot/dhcp"
	"github.com/kilnhq/kiln/spec/kilntest"
	"github.com/prometheus/client_golang/prometheus"
)

// deniedLog keeps every log record that mentions a permission denied.
type deniedLog struct {
	mu     sync.Mutex
	denied []string
}

func (d *deniedLog) Enabled(context.Context, slog.Level) bool { return true }
func (d *deniedLog) WithGroup(string) slog.Handler            { return d }
func (d *deniedLog) WithAttrs(as []slog.Attr) slog.Handler {
	return &deniedChild{d, as}
}
func (d *deniedLog) Handle(ctx context.Context, r slog.Record) error {
	return (&deniedChild{d, nil}).Handle(ctx, r)
}

type deniedChild struct {
	d  *deniedLog
	as []slog.Attr
}

func (c *deniedChild) Enabled(context.Context, slog.Level) bool { return true }
func (c *deniedChild) WithGroup(string) slog.Handler            { return c }
func (c *deniedChild) WithAttrs(as []slog.Attr) slog.Handler {
	return &deniedChild{c.d, append(append([]slog.Attr{}, c.as...), as...)}
}
func (c *deniedChild) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	for _, a := range c.as {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
	}
	r.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s=%v", a.Key, a.Value); return true })
	if s := b.String(); strings.Contains(s, "permission denied") {
		c.d.mu.Lock()
		c.d.denied = append(c.d.denied, s)
		c.d.mu.Unlock()
	}
	return nil
}

func (d *deniedLog) list() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.denied...)
}

const roleImage = `---
apiVersion: kiln.dev/v1alpha1
kind: Image
metadata: {name: eph}
spec:
  purpose: ephemeral
  arch: amd64
  kernel: {url: "http://127.0.0.1:1/vmlinuz", sha256: 5d8e8c4f8f3f0b6f5c2a1d9e7b3c4a5f6e7d8c9b0a1f2e3d4c5b6a7980123456}
  initrd: {url: "http://127.0.0.1:1/initrd", sha256: 0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0}
`

// A rack agent logged in as its own kiln-rack-r1 etcd user (auth on,
// roles from InitRoles) carries out a netboot power task and serves the
// machine's boot script, and etcd refuses nothing it does. Every refused
// write is listed (the agent logs them) so that what is still outside
// the rack's prefixes is plain.
func TestRackAgentRunsWithItsRole(t *testing.T) {
	rootCli, cfg := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	store := invtest.Apply(t, rootCli, invtest.Load(t, tasksInventory+machineDoc(1, "m1", "ipmi")+roleImage))
	dir := t.TempDir()
	pw := map[string]string{etcd.RootUser: "root-pw", etcd.RackUser("r1"): "rack-pw"}
	for u, p := range pw {
		os.WriteFile(filepath.Join(dir, u), []byte(p), 0o600)
	}
	if err := etcd.InitRoles(ctx, rootCli, etcd.RolesConfig{Layout: store.Keys(), Racks: []string{"r1"}, Passwords: pw, EnableAuth: true}, func(string) {}); err != nil {
		t.Fatal(err)
	}
	// The region's part, as root: the machine is to commission.
	region, err := etcd.Connect(etcd.Config{Endpoints: cfg.Endpoints, Username: etcd.RootUser, PasswordFile: filepath.Join(dir, etcd.RootUser)})
	if err != nil {
		t.Fatal(err)
	}
	defer region.Close()
	rs := inventory.NewStore(region, "", quiet())
	st, _ := json.Marshal(inventory.MachineStatus{BootPurpose: "commission"})
	if _, err := region.Put(ctx, rs.Keys().MachineStatus("m1"), string(st)); err != nil {
		t.Fatal(err)
	}

	rackCli, err := etcd.Connect(etcd.Config{Endpoints: cfg.Endpoints, Username: etcd.RackUser("r1"), PasswordFile: filepath.Join(dir, etcd.RackUser("r1"))})
	if err != nil {
		t.Fatal(err)
	}
	defer rackCli.Close()
	logs := &deniedLog{}
	httpAddr := etcdtest.FreeAddr(t)
	agent := New(Config{Rack: "r1", ID: "a1", TTL: 2 * time.Second,
		DHCP:     dhcp.Options{Interfaces: []string{"lo"}, Port: freeUDPPort(t), ProxyPort: -1},
		HTTPAddr: httpAddr, Powerer: &fakePower{on: map[string]bool{}}},
		inventory.NewStore(rackCli, "", quiet()), prometheus.NewRegistry(), slog.New(logs))
	actx, acancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- agent.Run(actx) }()
	defer func() {
		acancel()
		<-done
		for _, d := range logs.list() {
			t.Errorf("refused: %s", d)
		}
	}()

	b, _ := json.Marshal(inventory.PowerTask{ID: "m1-1", Machine: "m1", Action: inventory.TaskNetboot, State: inventory.TaskPending, CreatedAt: time.Now()})
	if _, err := region.Put(ctx, rs.Keys().Task("r1", "m1"), string(b)); err != nil {
		t.Fatal(err)
	}
	var pt inventory.PowerTask
	kilntest.Eventually(t, 20*time.Second, "the netboot task to finish with the rack's role", func() bool {
		resp, err := region.Get(ctx, rs.Keys().Task("r1", "m1"))
		if err != nil || len(resp.Kvs) != 1 {
			return false
		}
		pt = inventory.PowerTask{}
		json.Unmarshal(resp.Kvs[0].Value, &pt)
		return pt.Finished()
	})
	if pt.State != inventory.TaskDone {
		t.Errorf("netboot task: %+v", pt)
	}

	var body string
	kilntest.Eventually(t, 20*time.Second, "the boot script", func() bool {
		resp, err := http.Get("http://" + httpAddr + "/boot/02:00:00:00:00:01/script.ipxe")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		bb, _ := io.ReadAll(resp.Body)
		body = string(bb)
		if resp.StatusCode != http.StatusOK {
			t.Logf("script: %d %s", resp.StatusCode, strings.TrimSpace(body))
			return len(logs.list()) > 0 // refused: stop waiting, report
		}
		return true
	})
	if !strings.Contains(body, "kiln.purpose=commission") {
		t.Errorf("boot script is not the commissioning one:\n%s", body)
	}
	// An unknown MAC boots too: discovery is the rack's to record.
	resp, err := http.Get("http://" + httpAddr + "/boot/02:00:00:00:00:99/script.ipxe")
	if err != nil {
		t.Fatal(err)
	}
	bb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("unknown MAC's script: %d %s", resp.StatusCode, strings.TrimSpace(string(bb)))
	}
}
