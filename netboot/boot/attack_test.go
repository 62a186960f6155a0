package boot_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/etcd"
	"github.com/kilnhq/kiln/inventory/etcdtest"
	. "github.com/kilnhq/kiln/netboot/boot"
	"github.com/kilnhq/kiln/netboot/boot/boottest"
	"github.com/kilnhq/kiln/spec/agentapi"
)

// The tests speak from two loopback addresses: the machine's (127.0.0.1,
// what Kiln's DHCP gave it) and an attacker's (127.0.0.2) on the same
// provisioning network.
var (
	machineIP  = []string{"--interface", "127.0.0.1"}
	attackerIP = []string{"--interface", "127.0.0.2"}
)

func hasEvent(b *boottest.Backend, want string) bool {
	for _, e := range b.Events() {
		if strings.Contains(e, want) {
			return true
		}
	}
	return false
}

// Stealing a token: a script fetch from another address than the one
// Kiln's DHCP leased to the MAC gets no token; the real machine still
// gets one and its agent works; replaying its token from the attacker's
// address is refused.
func TestStealToken(t *testing.T) {
	t.Parallel()
	b := boottest.New(loadInventory(t, "../../examples/lab"), nil)
	ts := newTestServer(t, b)
	b.SetLease(vm1MAC, "127.0.0.1")
	b.Pending(t, "vm-1", "task-1", agentapi.PurposeCommission)

	code, stolen := curl(t, append(attackerIP, ts.URL+"/boot/"+vm1MAC+"/script.ipxe")...)
	if code != 200 || strings.Contains(stolen, "kiln.token=") || !strings.Contains(stolen, "exit") {
		t.Fatalf("attacker's fetch: %d, want a script without a token:\n%s", code, stolen)
	}
	if !hasEvent(b, "vm-1 boot-refused script fetched from 127.0.0.2, but Kiln's DHCP gave 127.0.0.1") {
		t.Errorf("the attempt is not in the timeline: %q", b.Events())
	}
	_, real := curl(t, append(machineIP, ts.URL+"/boot/"+vm1MAC+"/script.ipxe")...)
	tok := tokenOf(t, real)
	auth := []string{"-H", "Authorization: Bearer " + tok}
	if code, body := curl(t, append(append(machineIP, auth...), ts.URL+"/agent/vm-1/task")...); code != 200 {
		t.Errorf("the machine's own agent: %d %s", code, body)
	}
	// Replay from another address: every token check refuses it.
	for _, c := range []struct{ method, path, body string }{
		{"GET", "/agent/vm-1/task", ""},
		{"GET", "/metadata/vm-1/user-data", ""},
		{"POST", "/agent/vm-1/result", `{"success": true}`},
		{"POST", "/agent/vm-1/facts", `{"cpus": 1}`},
	} {
		args := append(append([]string{"-X", c.method}, attackerIP...), auth...)
		if c.body != "" {
			args = append(args, "-H", "Content-Type: application/json", "--data", c.body)
		}
		if code, _ := curl(t, append(args, ts.URL+c.path)...); code != 403 {
			t.Errorf("replayed token from another address, %s %s: %d, want 403", c.method, c.path, code)
		}
	}
	n := len(b.Reports("vm-1"))
	if n != 0 {
		t.Errorf("the attacker's reports were stored: %d", n)
	}
	if !hasEvent(b, "token bound to 127.0.0.1, used from 127.0.0.2") {
		t.Errorf("the replay is not in the timeline: %q", b.Events())
	}
}

// A boot's token is handed out once: a second fetch (even from the
// machine's own address) gets a script without it, and that is recorded.
// No power task, no token.
func TestTokenHandedOutOnce(t *testing.T) {
	t.Parallel()
	b := boottest.New(loadInventory(t, "../../examples/lab"), nil)
	ts := newTestServer(t, b)
	b.SetLease(vm1MAC, "127.0.0.1")

	_, s := curl(t, ts.URL+"/boot/"+vm1MAC+"/script.ipxe")
	if strings.Contains(s, "kiln.token=") || !hasEvent(b, "vm-1 boot-refused no power task") {
		t.Errorf("no power task, but: %s / %q", s, b.Events())
	}
	b.Pending(t, "vm-1", "task-1", agentapi.PurposeCommission)
	_, s = curl(t, ts.URL+"/boot/"+vm1MAC+"/script.ipxe")
	tok := tokenOf(t, s)
	_, again := curl(t, ts.URL+"/boot/"+vm1MAC+"/script.ipxe")
	if strings.Contains(again, "kiln.token=") {
		t.Fatalf("second fetch got a token:\n%s", again)
	}
	if !strings.Contains(again, "token already handed out") || !hasEvent(b, "vm-1 boot-refused token already handed out to 127.0.0.1") {
		t.Errorf("second fetch: %q, timeline %q", again, b.Events())
	}
	if code, _ := curl(t, "-H", "Authorization: Bearer "+tok, ts.URL+"/agent/vm-1/task"); code != 200 {
		t.Errorf("the first token stopped working: %d", code)
	}
}

// Proxy DHCP: no lease is known, so the first fetcher's address is bound
// (trust on first use, recorded), and the token works from it only.
func TestTrustOnFirstUse(t *testing.T) {
	t.Parallel()
	b := boottest.New(loadInventory(t, "../../examples/lab"), nil)
	ts := newTestServer(t, b)
	b.Pending(t, "vm-2", "task-1", agentapi.PurposeCommission)
	_, s := curl(t, append([]string{"--interface", "127.0.0.3"}, ts.URL+"/boot/"+vm2MAC+"/script.ipxe")...)
	tok := tokenOf(t, s)
	if !hasEvent(b, "vm-2 token-bound no DHCP lease known (proxyDHCP): token bound to the first fetcher, 127.0.0.3") {
		t.Errorf("binding not recorded: %q", b.Events())
	}
	auth := []string{"-H", "Authorization: Bearer " + tok}
	if code, _ := curl(t, append(append([]string{"--interface", "127.0.0.3"}, auth...), ts.URL+"/agent/vm-2/task")...); code != 200 {
		t.Errorf("from the bound address: %d", code)
	}
	if code, _ := curl(t, append(append(machineIP, auth...), ts.URL+"/agent/vm-2/task")...); code != 403 {
		t.Errorf("from another address: %d, want 403", code)
	}
}

// Forging results: the server stamps every report with the task and boot
// of the token it came with (the region drops reports of other boots);
// the sender cannot choose them, and an earlier boot's token is refused.
func TestReportsStampedWithTheirBoot(t *testing.T) {
	t.Parallel()
	b := boottest.New(loadInventory(t, "../../examples/lab"), nil)
	ts := newTestServer(t, b)
	b.Pending(t, "vm-1", "task-1", agentapi.PurposeCommission)
	_, s := curl(t, ts.URL+"/boot/"+vm1MAC+"/script.ipxe")
	old := tokenOf(t, s)
	rec1, _ := b.Tokens().Get(t.Context(), "vm-1")
	post := func(tok, what, body string) int {
		code, _ := curl(t, "-H", "Authorization: Bearer "+tok, "-H", "Content-Type: application/json", "--data", body, ts.URL+"/agent/vm-1/"+what)
		return code
	}
	if code := post(old, "result", `{"success": true}`); code != 204 {
		t.Fatalf("result: %d", code)
	}
	if code := post(old, "result", `{"success": true, "taskID": "task-2"}`); code != 400 {
		t.Errorf("a report naming its own task: %d, want 400", code)
	}
	b.Pending(t, "vm-1", "task-2", agentapi.PurposeCommission) // the next boot
	_, s = curl(t, ts.URL+"/boot/"+vm1MAC+"/script.ipxe")
	cur := tokenOf(t, s)
	rec2, _ := b.Tokens().Get(t.Context(), "vm-1")
	if code := post(old, "result", `{"success": true}`); code != 403 {
		t.Errorf("the earlier boot's token: %d, want 403", code)
	}
	if code := post(cur, "progress", `{"phase": "facts"}`); code != 204 {
		t.Errorf("progress: %d", code)
	}
	got := b.Reports("vm-1")
	if len(got) != 2 || got[0].TaskID != "task-1" || got[0].BootID != rec1.BootID || got[1].TaskID != "task-2" || got[1].BootID != rec2.BootID || rec1.BootID == rec2.BootID {
		t.Errorf("reports %+v, want task-1/%s then task-2/%s", got, rec1.BootID, rec2.BootID)
	}
	if b, _ := json.Marshal(got[0]); !strings.Contains(string(b), `"taskID":"task-1","bootID":"`+rec1.BootID+`"`) {
		t.Errorf("report JSON %s", b)
	}
}

// Flooding the boot server: per-source-address and per-MAC limits answer
// 429 with Retry-After, a legitimate machine elsewhere is still served,
// and the limiters' memory is bounded.
func TestScriptRateLimits(t *testing.T) {
	t.Parallel()
	b := boottest.New(loadInventory(t, "../../examples/lab"), nil)
	s := New(Options{ScriptRatePerIP: 0.01, ScriptRatePerMAC: 0.01, ScriptBurst: 3, MaxLimiters: 8}, b, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	limited := 0
	for i := range 40 {
		code, _ := curl(t, append(attackerIP, "-D", "/dev/stderr", ts.URL+fmt.Sprintf("/boot/aa:bb:cc:00:00:%02x/script.ipxe", i))...)
		switch code {
		case 200:
		case 429:
			limited++
		default:
			t.Fatalf("flood request %d: %d", i, code)
		}
	}
	if limited != 37 {
		t.Errorf("%d of 40 flood requests limited, want 37", limited)
	}
	req := httptest.NewRequest("GET", "/boot/aa:bb:cc:00:00:99/script.ipxe", nil)
	req.RemoteAddr = "127.0.0.2:4000"
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, req)
	if rec.Code != 429 || rec.Header().Get("Retry-After") == "" {
		t.Errorf("limited request: %d, Retry-After %q", rec.Code, rec.Header().Get("Retry-After"))
	}
	// One MAC from many addresses is limited per MAC.
	macLimited := 0
	for i := range 6 {
		ip := fmt.Sprintf("127.0.1.%d", i+1)
		if code, _ := curl(t, "--interface", ip, ts.URL+"/boot/aa:bb:cc:11:11:11/script.ipxe"); code == 429 {
			macLimited++
		}
	}
	if macLimited != 3 {
		t.Errorf("one MAC from 6 addresses: %d limited, want 3", macLimited)
	}
	b.Pending(t, "vm-1", "task-1", agentapi.PurposeCommission)
	code, script := curl(t, append(machineIP, ts.URL+"/boot/"+vm1MAC+"/script.ipxe")...)
	if code != 200 || !strings.Contains(script, "kiln.token=") {
		t.Errorf("the legitimate machine during the flood: %d\n%s", code, script)
	}
	if n, m := s.LimiterSizes(); n > 8 || m > 8 {
		t.Errorf("limiter maps hold %d MACs and %d addresses, bound 8", n, m)
	}
}

// Discovered facts are capped at 64 KiB; inventory machines keep 1 MiB.
// A full discovery cap answers 503.
func TestDiscoveredBounds(t *testing.T) {
	t.Parallel()
	b := boottest.New(loadInventory(t, "../../examples/lab"), nil)
	ts := newTestServer(t, b)
	_, s := curl(t, ts.URL+"/boot/aa:bb:cc:00:11:22/script.ipxe")
	tok := tokenOf(t, s)
	big := `{"blob":"` + strings.Repeat("a", MaxDiscoveredFactsBytes) + `"}`
	code, _ := curlIn(t, big, "-H", "Authorization: Bearer "+tok, "-H", "Content-Type: application/json", "--data-binary", "@-", ts.URL+"/agent/discovered-aa-bb-cc-00-11-22/facts")
	if code != 413 {
		t.Errorf("discovered facts over 64 KiB: %d, want 413", code)
	}
	b.Pending(t, "vm-1", "task-1", agentapi.PurposeCommission)
	_, s = curl(t, ts.URL+"/boot/"+vm1MAC+"/script.ipxe")
	code, _ = curlIn(t, big, "-H", "Authorization: Bearer "+tokenOf(t, s), "-H", "Content-Type: application/json", "--data-binary", "@-", ts.URL+"/agent/vm-1/facts")
	if code != 204 {
		t.Errorf("inventory machine's 64 KiB facts: %d, want 204", code)
	}
	b.SetDiscoveredLeaseErr(fmt.Errorf("rack rack-1: %w", ErrDiscoveryFull))
	if code, body := curl(t, ts.URL+"/boot/aa:bb:cc:00:11:33/script.ipxe"); code != 503 || !strings.Contains(body, "cap reached") {
		t.Errorf("discovery full: %d %s", code, body)
	}
}

// The OS report-in is accepted only from the machine's declared or
// leased addresses.
func TestOSReportFromUndeclaredAddress(t *testing.T) {
	t.Parallel()
	b := boottest.New(loadInventory(t, "../../examples/lab"), nil)
	ts := newTestServer(t, b)
	b.SetPurpose("vm-1", agentapi.PurposeDeploy)
	b.SetLease(vm1MAC, "127.0.0.1")
	b.Pending(t, "vm-1", "task-1", agentapi.PurposeDeploy)
	_, s := curl(t, ts.URL+"/boot/"+vm1MAC+"/script.ipxe")
	_, vd := curl(t, "-H", "Authorization: Bearer "+tokenOf(t, s), ts.URL+"/metadata/vm-1/vendor-data")
	u := phoneHomeURL(t, vd)
	if code, _ := curlIn(t, "hostname=vm-1", append(attackerIP, "--data-binary", "@-", u)...); code != 403 {
		t.Errorf("OS report from an undeclared address: %d, want 403", code)
	}
	if !hasEvent(b, "vm-1 boot-refused OS report from 127.0.0.2") {
		t.Errorf("not recorded: %q", b.Events())
	}
	if code, _ := curlIn(t, "hostname=vm-1", append(machineIP, "--data-binary", "@-", u)...); code != 204 {
		t.Errorf("OS report from the machine's leased address: %d, want 204", code)
	}
}

// AgentURL moves the agent API (kiln.url, image and metadata URLs) while
// iPXE's own fetches stay on BaseURL.
func TestAgentURL(t *testing.T) {
	t.Parallel()
	b := boottest.New(loadInventory(t, "../../examples/lab"), nil)
	s := New(Options{BaseURL: "http://10.42.0.1:8080", AgentURL: "https://rack:8443/"}, b, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	b.SetPurpose("vm-1", agentapi.PurposeDeploy)
	b.Pending(t, "vm-1", "task-1", agentapi.PurposeDeploy)
	_, script := curl(t, ts.URL+"/boot/"+vm1MAC+"/script.ipxe")
	if !strings.Contains(script, "kernel http://10.42.0.1:8080/images/") || !strings.Contains(script, " kiln.url=https://rack:8443 ") {
		t.Errorf("script:\n%s", script)
	}
	_, body := curl(t, "-H", "Authorization: Bearer "+tokenOf(t, script), ts.URL+"/agent/vm-1/task")
	var task agentapi.Task
	if err := json.Unmarshal([]byte(body), &task); err != nil || task.Image == nil ||
		!strings.HasPrefix(task.Image.URL, "https://rack:8443/images/") || task.MetadataURL != "https://rack:8443/metadata/vm-1/" {
		t.Errorf("task %s %v", body, err)
	}
}

// With etcd stopped, every handler that reads the token store answers
// 503 within the request's 2 s deadline (the rack's middleware sets it),
// never hangs and never answers 500.
func TestEtcdStopped(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	cfg := etcd.Config{DataDir: t.TempDir(), ClientURL: "http://" + etcdtest.FreeAddr(t), PeerURL: "http://" + etcdtest.FreeAddr(t)}
	e, err := etcd.StartEmbedded(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Endpoints = []string{cfg.ClientURL}
	cli, err := etcd.Connect(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	store := inventory.NewStore(cli, "", slog.New(slog.NewTextHandler(io.Discard, nil)))
	b := boottest.New(loadInventory(t, "../../examples/lab"), store.Tokens("rack-1"))
	b.Pending(t, "vm-1", "task-1", agentapi.PurposeCommission)
	s := New(Options{ScriptBurst: 1000}, b, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	deadline := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		s.Handler().ServeHTTP(w, r.WithContext(ctx))
	})
	ts := httptest.NewServer(deadline)
	t.Cleanup(ts.Close)
	_, script := curl(t, ts.URL+"/boot/"+vm1MAC+"/script.ipxe")
	tok := tokenOf(t, script)
	e.Close()
	for _, p := range []struct{ method, path string }{
		{"GET", "/boot/" + vm1MAC + "/script.ipxe"},
		{"GET", "/metadata/vm-1/meta-data?token=" + tok},
		{"GET", "/agent/vm-1/task?token=" + tok},
		{"POST", "/agent/vm-1/progress?token=" + tok},
		{"POST", "/os/vm-1/report?token=x"},
	} {
		start := time.Now()
		code, body := curl(t, "-X", p.method, "-m", "10", "-H", "Content-Type: application/json", "--data", `{"phase":"x"}`, ts.URL+p.path)
		if took := time.Since(start); code != 503 || took > 3*time.Second {
			t.Errorf("%s %s with etcd stopped: %d after %s, want 503 within 3 s: %s", p.method, p.path, code, took, body)
		}
	}
	gctx, gcancel := context.WithTimeout(t.Context(), time.Second)
	defer gcancel()
	if _, err := b.Tokens().Get(gctx, "vm-1"); err == nil || errors.Is(err, inventory.ErrNotFound) {
		t.Errorf("etcd still answers: %v", err)
	}
}
