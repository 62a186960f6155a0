package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/etcdtest"
	"github.com/kilnhq/kiln/inventory/etcdtest/invtest"
	"github.com/kilnhq/kiln/netboot/dhcp"
	"github.com/kilnhq/kiln/reconciler/api"
	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/kilntest"
)

// The CLI through the region API prints what it prints from etcd: get
// (each kind, each format), describe, events and retry, byte for byte;
// what only etcd serves says so.
func TestCLIThroughTheAPI(t *testing.T) {
	cli, _ := etcdtest.Start(t)
	store := invtest.Apply(t, cli, invtest.Load(t, testInventory+goldenExtra))
	ctx := context.Background()
	at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	put := func(key string, v any) {
		b, _ := json.Marshal(v)
		if _, err := cli.Put(ctx, key, string(b)); err != nil {
			t.Fatal(err)
		}
	}
	k := store.Keys()
	put(k.MachineStatus("vm-1"), inventory.MachineStatus{Phase: "failed-deploying", Rack: "r1", Reason: "disk too small", PhaseStartedAt: at,
		TaskID: "T1", Conditions: []inventory.Condition{{Type: "CablingMismatch", Status: "True", Reason: "Mismatch", Since: at}}})
	put(k.MachineStatus("vm-2"), inventory.MachineStatus{Phase: "ready", Rack: "r1", PhaseStartedAt: at})
	put(k.Task("r1", "vm-1"), inventory.PowerTask{ID: "T1", Machine: "vm-1", Action: "netboot", State: "done", CreatedAt: at})
	put(k.Timeline("r1", "vm-1"), inventory.Timeline{Events: []inventory.TimelineEvent{{Time: at, Type: "dhcp", Detail: "offer 192.0.2.11"}}})
	put(k.Report("r1", "vm-1"), inventory.MachineReport{TaskID: "T1", Result: &inventory.AgentResult{Reason: "disk too small", At: at}})
	put(k.ImageStatus("r1", "debian"), inventory.ImageStatus{Rack: "r1", State: "ready", UpdatedAt: at})
	put(k.Discovered("r1", "52:54:00:99:00:01"), inventory.Discovered{MAC: "52:54:00:99:00:01", Rack: "r1", Subnet: "net1", IP: "192.0.2.50", FirstSeen: at, LastSeen: at, Arch: "x86_64", VendorClass: "PXEClient"})
	put(k.Report("r1", spec.DiscoveredName("52:54:00:99:00:01")), map[string]any{"facts": map[string]any{"version": 1, "arch": "amd64", "cpu": map[string]any{"count": 4}, "disks": []map[string]any{{"name": "sda", "sizeBytes": 500 << 30, "serial": "S1"}}}})
	put(k.Lease("r1", "net1", "192.0.2.11"), dhcp.Lease{Subnet: "net1", IP: netip.MustParseAddr("192.0.2.11"), MAC: "52:54:00:42:00:01", Machine: "vm-1", Reserved: true})
	if err := store.PutEvent(ctx, inventory.Event{Time: at, Machine: "vm-1", Type: "Warning", Reason: "Failed", Message: "disk too small", From: "deploying", To: "failed-deploying"}, 0); err != nil {
		t.Fatal(err)
	}

	srv := startAPI(t, store)
	tok, _, err := store.CreateAPIToken(ctx, "cli", inventory.RoleOperator, 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	endpoint := cli.Endpoints()[0]
	diffDir := t.TempDir() // the inventory with vm-2 deployed and a new machine
	os.WriteFile(filepath.Join(diffDir, "inv.yaml"), []byte(strings.Replace(testInventory+goldenExtra, "metadata: {name: vm-2}\nspec:\n  state: ready", "metadata: {name: vm-2}\nspec:\n  state: deployed\n  image: debian", 1)+`---
apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: vm-3}
spec:
  interfaces: [{name: eno1, mac: "52:54:00:42:00:03", subnet: net1, ip: 192.0.2.13}]
`), 0o644)
	kiln := func(viaAPI bool, args ...string) (string, string, int) {
		var out, errOut bytes.Buffer
		if viaAPI {
			t.Setenv("KILN_SERVER", srv.URL)
			t.Setenv("KILN_TOKEN", tok)
		} else {
			t.Setenv("KILN_SERVER", "")
			args = append(args, "--etcd-endpoints", endpoint)
		}
		code := run(ctx, args, &out, &errOut)
		return out.String(), errOut.String(), code
	}
	// The API's cache follows etcd: wait until it holds the last write.
	kilntest.Eventually(t, 10*time.Second, "the API's cache", func() bool {
		out, _, _ := kiln(true, "get", "images", "-o", "wide")
		return strings.Contains(out, "r1=ready")
	})
	for _, args := range [][]string{
		{"get", "machines"}, {"get", "machines", "-o", "wide"}, {"get", "machines", "-o", "json"}, {"get", "machine", "vm-2", "-o", "yaml"},
		{"get", "machines", "-o", "name"}, {"get", "racks"}, {"get", "subnets", "-o", "wide"}, {"get", "images", "-o", "wide"},
		{"get", "profiles"}, {"get", "source"}, {"get", "discovered"}, {"get", "rollouts"}, {"get", "leases"}, {"get", "lease", "vm-1", "-o", "json"},
		{"describe", "machine", "vm-1"}, {"describe", "machine", "vm-2"}, {"events", "vm-1"}, {"events", "-o", "json"},
		{"get", "machine", "nope"}, {"describe", "machine", "nope"}, {"retry", "vm-2"},
		{"export", "discovered"}, {"diff", diffDir},
	} {
		eout, eerr, ecode := kiln(false, args...)
		aout, aerr, acode := kiln(true, args...)
		if eout != aout { // ages are printed to the second: once more, in case one passed between
			eout, eerr, ecode = kiln(false, args...)
			aout, aerr, acode = kiln(true, args...)
		}
		if eout != aout || ecode != acode {
			t.Errorf("kiln %s: etcd (%d):\n%s%s\nAPI (%d):\n%s%s", strings.Join(args, " "), ecode, eout, eerr, acode, aout, aerr)
		}
	}
	// The retry through the API is the operator's, and named in an event.
	out, errOut, code := kiln(true, "retry", "vm-1")
	if code != exitOK || !strings.Contains(out, "retry of deploying requested") {
		t.Fatalf("kiln retry vm-1 through the API: %d %s %s", code, out, errOut)
	}
	evs, _, _ := store.Events(ctx, "vm-1")
	if !strings.Contains(evs[len(evs)-1].Message, "token cli") {
		t.Errorf("last event %+v, want the retry naming the token", evs[len(evs)-1])
	}
	// Power through the API is the region's decision: recorded in the
	// status for its leader, never a BMC call from here.
	if out, errOut, code := kiln(true, "power", "off", "vm-2"); code != exitOK || !strings.Contains(out, "power off asked of the region") {
		t.Errorf("kiln power off through the API: %d %s %s", code, out, errOut)
	}
	if st, err := inventory.GetJSON[inventory.MachineStatus](ctx, store, k.MachineStatus("vm-2")); err != nil || st.PowerRequest == nil || st.PowerRequest.By != "cli" {
		t.Errorf("vm-2's status after kiln power off: %+v %v", st.PowerRequest, err)
	}
	if _, errOut, code := kiln(true, "power", "boot-disk", "vm-2"); code != exitUsage || !strings.Contains(errOut, "etcd only") {
		t.Errorf("kiln power boot-disk through the API: %d %s", code, errOut)
	}
	t.Setenv("KILN_TOKEN", "")
	var o, e bytes.Buffer
	if c := run(ctx, []string{"get", "machines", "--server", srv.URL}, &o, &e); c == exitOK || !strings.Contains(e.String(), "KILN_TOKEN") {
		t.Errorf("no token: %d %s", c, e.String())
	}
}

// A config file's context names the server, its CA and the token;
// --context picks another; flags and the environment win; a token in a
// file others may read is refused.
func TestConfigContexts(t *testing.T) {
	dir := t.TempDir()
	tokFile := dir + "/lab.token"
	os.WriteFile(tokFile, []byte("kiln_lab\n"), 0o600)
	cfg := dir + "/config"
	os.WriteFile(cfg, []byte(`current-context: prod
contexts:
  - {name: prod, server: "https://kiln.example:9443", server-ca: /etc/kiln/ca.pem, token: kiln_prod}
  - {name: lab, server: "http://127.0.0.1:9443", token-file: `+tokFile+`}
`), 0o600)
	t.Setenv("KILN_CONFIG", cfg)
	t.Setenv("KILN_TOKEN", "")
	resolve := func(c clientFlags) clientFlags {
		t.Helper()
		if c.endpoints == "" {
			c.endpoints = defaultEtcdEndpoints
		}
		if err := c.resolve(); err != nil {
			t.Fatal(err)
		}
		return c
	}
	if c := resolve(clientFlags{}); c.server != "https://kiln.example:9443" || c.token != "kiln_prod" || c.serverCA != "/etc/kiln/ca.pem" {
		t.Errorf("current context: %+v", c)
	}
	if c := resolve(clientFlags{context: "lab"}); c.server != "http://127.0.0.1:9443" || c.token != "kiln_lab" {
		t.Errorf("--context lab: %+v", c)
	}
	if c := resolve(clientFlags{endpoints: "http://10.0.0.1:2379"}); c.server != "" {
		t.Errorf("--etcd-endpoints given: the context still applied: %+v", c)
	}
	t.Setenv("KILN_TOKEN", "kiln_env")
	if c := resolve(clientFlags{server: "http://other:9443"}); c.server != "http://other:9443" || c.token != "kiln_env" {
		t.Errorf("flags and environment: %+v", c)
	}
	c := clientFlags{context: "nope", endpoints: defaultEtcdEndpoints}
	if err := c.resolve(); err == nil || !strings.Contains(err.Error(), `no context "nope"`) {
		t.Errorf("unknown context: %v", err)
	}
	os.Chmod(cfg, 0o644)
	c = clientFlags{endpoints: defaultEtcdEndpoints}
	if err := c.resolve(); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("a readable config with a token: %v", err)
	}
	os.WriteFile(cfg, []byte("current-context: x\nbogus: 1\n"), 0o600)
	if err := c.resolve(); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("an unknown key: %v", err)
	}
}

// kiln get --watch and kiln events --watch through the API print what
// changes, as they do from etcd.
func TestWatchThroughTheAPI(t *testing.T) {
	cli, _ := etcdtest.Start(t)
	store := invtest.Apply(t, cli, invtest.Load(t, testInventory))
	ctx := context.Background()
	put := func(phase string) {
		b, _ := json.Marshal(inventory.MachineStatus{Phase: phase, Rack: "r1"})
		if _, err := cli.Put(ctx, store.Keys().MachineStatus("vm-1"), string(b)); err != nil {
			t.Fatal(err)
		}
	}
	put("ready")
	srv := startAPI(t, store)
	tok, _, _ := store.CreateAPIToken(ctx, "w", inventory.RoleViewer, 0, time.Now())
	t.Setenv("KILN_SERVER", srv.URL)
	t.Setenv("KILN_TOKEN", tok)
	kilntest.Eventually(t, 10*time.Second, "the token admitted", func() bool {
		var o, e bytes.Buffer
		return run(ctx, []string{"get", "machines"}, &o, &e) == exitOK
	})
	putJSON := func(key string, v any) {
		b, _ := json.Marshal(v)
		if _, err := cli.Put(ctx, key, string(b)); err != nil {
			t.Fatal(err)
		}
	}
	k := store.Keys()
	now := time.Now().UTC()
	putJSON(k.Lease("r1", "net1", "192.0.2.11"), dhcp.Lease{Subnet: "net1", IP: netip.MustParseAddr("192.0.2.11"), MAC: "52:54:00:42:00:01", Machine: "vm-1", Reserved: true, Updated: now})
	putJSON(k.Discovered("r1", "52:54:00:99:00:01"), inventory.Discovered{MAC: "52:54:00:99:00:01", Rack: "r1", FirstSeen: now, LastSeen: now})
	for _, c := range []struct {
		args   []string
		change func()
		want   string
	}{
		{[]string{"get", "machines", "--watch"}, func() { put("deploying") }, "deploying"},
		{[]string{"events", "vm-1", "--watch"}, func() {
			store.PutEvent(ctx, inventory.Event{Time: now, Machine: "vm-1", Type: "Normal", Reason: "Deploying", Message: "deploying image debian", From: "ready", To: "deploying"}, 0)
		}, "deploying image debian"},
		{[]string{"get", "leases", "--watch"}, func() {
			putJSON(k.Lease("r1", "net1", "192.0.2.12"), dhcp.Lease{Subnet: "net1", IP: netip.MustParseAddr("192.0.2.12"), MAC: "52:54:00:42:00:02", Machine: "vm-2", Reserved: true, Updated: now})
		}, "192.0.2.12"},
		{[]string{"get", "discovered", "--watch"}, func() {
			putJSON(k.Discovered("r1", "52:54:00:99:00:02"), inventory.Discovered{MAC: "52:54:00:99:00:02", Rack: "r1", FirstSeen: now, LastSeen: now})
		}, "52:54:00:99:00:02"},
	} {
		wctx, stop := context.WithCancel(ctx)
		out, errOut := &syncBuffer{}, &syncBuffer{}
		code := make(chan int, 1)
		go func() { code <- run(wctx, c.args, out, errOut) }()
		t.Cleanup(stop)
		kilntest.Eventually(t, 10*time.Second, strings.Join(c.args, " ")+": the first listing", func() bool {
			return out.String() != "" || errOut.String() != ""
		})
		if out.String() == "" {
			t.Fatalf("%v: %s", c.args, errOut)
		}
		// No wait for the stream: it resumes from the listing's revision.
		c.change()
		kilntest.Eventually(t, 10*time.Second, strings.Join(c.args, " ")+" prints the change", func() bool { return strings.Contains(out.String(), c.want) })
		stop()
		if code := <-code; code != exitOK {
			t.Errorf("%v: exit %d %s", c.args, code, errOut)
		}
	}
}

// startAPI serves the region API over store until the test ends.
func startAPI(t *testing.T, store *inventory.Store) *httptest.Server {
	t.Helper()
	a := api.New(api.Config{Store: store})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(func() { srv.Close(); cancel(); <-done })
	return srv
}
