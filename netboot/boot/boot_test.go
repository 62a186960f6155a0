package boot_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	. "github.com/kilnhq/kiln/netboot/boot"
	"github.com/kilnhq/kiln/netboot/boot/boottest"
	"github.com/kilnhq/kiln/spec/agentapi"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"
)

const (
	vm2MAC = "52:54:00:42:00:02"
	vm1MAC = "52:54:00:42:00:01"
)

func TestScriptPerPurpose(t *testing.T) {
	t.Parallel()
	inv := loadInventory(t, "../../examples/lab")
	b := boottest.New(inv, nil)
	ts := newTestServer(t, b)
	img := inv.Images["kiln-ephemeral"]
	host := strings.TrimPrefix(ts.URL, "http://")

	prev := ""
	for i, p := range []string{agentapi.PurposeCommission, agentapi.PurposeDeploy, agentapi.PurposeErase, agentapi.PurposeCommission} {
		b.SetPurpose("vm-2", p)
		b.Pending(t, "vm-2", fmt.Sprintf("task-%d", i), p) // each netboot is a power task
		code, script := curl(t, ts.URL+"/boot/"+vm2MAC+"/script.ipxe?uuid=1234")
		if code != 200 {
			t.Fatalf("%s: status %d: %s", p, code, script)
		}
		lines := strings.Split(script, "\n")
		if lines[0] != "#!ipxe" {
			t.Errorf("%s: first line %q, want #!ipxe", p, lines[0])
		}
		tok := tokenOf(t, script)
		wantKernel := "kernel http://" + host + "/images/sha256/" + img.Spec.Kernel.SHA256 + "/vmlinuz console=ttyS0 kiln.url=http://" + host +
			" kiln.machine=vm-2 kiln.purpose=" + p + " kiln.token=" + tok + " initrd=initrd.gz || goto failed"
		wantInitrd := "initrd http://" + host + "/images/sha256/" + img.Spec.Initrd.SHA256 + "/initrd.gz || goto failed"
		for _, want := range []string{":retry", wantKernel, wantInitrd, "boot || goto failed", "goto retry"} {
			if !hasLine(lines, want) {
				t.Errorf("%s: script lacks line %q:\n%s", p, want, script)
			}
		}
		if strings.Contains(script, "chain") {
			t.Errorf("%s: the failure path fetches the script again (its token is used up):\n%s", p, script)
		}
		if len(tok) != 43 {
			t.Errorf("token %q: want 43 base64url characters (32 bytes)", tok)
		}
		if tok == prev {
			t.Errorf("%s: token not rotated", p)
		}
		// The new token works; the previous one no longer does.
		if code, body := curl(t, "-H", "Authorization: Bearer "+tok, ts.URL+"/agent/vm-2/task"); code != 200 || !strings.Contains(body, `"purpose":"`+p+`"`) {
			t.Errorf("%s: task with the new token: %d %s", p, code, body)
		}
		if prev != "" {
			if code, _ := curl(t, "-H", "Authorization: Bearer "+prev, ts.URL+"/agent/vm-2/task"); code != 403 {
				t.Errorf("%s: previous token still accepted (%d)", p, code)
			}
		}
		prev = tok
	}

	// Only the hash is stored.
	stored, err := b.Tokens().Get(t.Context(), "vm-2")
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(prev))
	if stored.SHA256 != hex.EncodeToString(sum[:]) || !stored.Expires.Equal(stored.IssuedAt.Add(DefaultTokenTTL)) || stored.BootID == "" {
		t.Errorf("stored token %+v", stored)
	}

	b.SetPurpose("vm-2", agentapi.PurposeLocal)
	code, script := curl(t, ts.URL+"/boot/"+vm2MAC+"/script.ipxe")
	for _, want := range []string{"#!ipxe", "iseq ${platform} efi && goto efi ||", "sanboot --no-describe --drive 0x80 || exit", ":efi", "exit"} {
		if code != 200 || !hasLine(strings.Split(script, "\n"), want) {
			t.Errorf("local: %d, lacks %q:\n%s", code, want, script)
		}
	}
	if strings.Contains(script, "kiln.token") {
		t.Errorf("local script carries a token")
	}
	// local hands out no token, so the last one (the deployed OS's
	// NoCloud seed) keeps working.
	if code, _ := curl(t, ts.URL+"/metadata/vm-2/meta-data?token="+prev); code != 200 {
		t.Errorf("token stopped working after a local boot: %d", code)
	}

	b.SetPurpose("vm-2", agentapi.PurposeOff)
	code, script = curl(t, ts.URL+"/boot/"+vm2MAC+"/script.ipxe")
	if code != 200 || !hasLine(strings.Split(script, "\n"), "poweroff") {
		t.Errorf("off: %d\n%s", code, script)
	}

	b.SetPurpose("vm-2", "bogus")
	if code, _ := curl(t, ts.URL+"/boot/"+vm2MAC+"/script.ipxe"); code != 500 {
		t.Errorf("unknown purpose: %d, want 500", code)
	}
	if code, _ := curl(t, ts.URL+"/boot/not-a-mac/script.ipxe"); code != 400 {
		t.Errorf("bad MAC: %d, want 400", code)
	}

	ev := strings.Join(b.Events(), "\n")
	for _, want := range []string{"vm-2 http-script commission uuid=1234", "vm-2 http-script deploy", "vm-2 http-script local", "vm-2 http-script off", "vm-2 agent-task erase", "vm-2 http-metadata meta-data"} {
		if !strings.Contains(ev, want) {
			t.Errorf("timeline lacks %q:\n%s", want, ev)
		}
	}
}

func hasLine(lines []string, want string) bool {
	for _, l := range lines {
		if l == want {
			return true
		}
	}
	return false
}

func TestUnknownMACDiscovers(t *testing.T) {
	t.Parallel()
	b := boottest.New(loadInventory(t, "../../examples/lab"), nil)
	ts := newTestServer(t, b)
	// iPXE's ${mac:hexhyp} form is accepted too.
	code, script := curl(t, ts.URL+"/boot/AA-BB-CC-00-11-22/script.ipxe")
	if code != 200 {
		t.Fatalf("status %d: %s", code, script)
	}
	if !strings.Contains(script, " kiln.machine=discovered-aa-bb-cc-00-11-22 kiln.purpose=discover ") {
		t.Errorf("unknown MAC not discovered:\n%s", script)
	}
	tok := tokenOf(t, script)
	code, body := curl(t, "-H", "Authorization: Bearer "+tok, ts.URL+"/agent/discovered-aa-bb-cc-00-11-22/task")
	var task agentapi.Task
	if code != 200 || json.Unmarshal([]byte(body), &task) != nil || task.Purpose != agentapi.PurposeDiscover || task.BootID == "" {
		t.Errorf("discover task: %d %s", code, body)
	}
	code, _ = curl(t, "-H", "Authorization: Bearer "+tok, "-H", "Content-Type: application/json",
		"--data", `{"cpus": 4, "disks": [{"name": "sda"}]}`, ts.URL+"/agent/discovered-aa-bb-cc-00-11-22/facts")
	if code != 204 {
		t.Errorf("discovered facts: %d", code)
	}
	// The discovery token reads no machine's metadata.
	if code, _ := curl(t, "-H", "Authorization: Bearer "+tok, ts.URL+"/metadata/vm-1/user-data"); code != 403 {
		t.Errorf("discovery token read vm-1: %d", code)
	}
}

func TestTokenRequired(t *testing.T) {
	t.Parallel()
	b := boottest.New(loadInventory(t, "../../examples/lab"), nil)
	ts := newTestServer(t, b)
	b.Pending(t, "vm-1", "t1", agentapi.PurposeCommission)
	b.Pending(t, "vm-2", "t2", agentapi.PurposeCommission)
	_, s1 := curl(t, ts.URL+"/boot/"+vm1MAC+"/script.ipxe")
	_, s2 := curl(t, ts.URL+"/boot/"+vm2MAC+"/script.ipxe")
	tok1, tok2 := tokenOf(t, s1), tokenOf(t, s2)

	endpoints := []struct{ method, path, body string }{
		{"GET", "/metadata/vm-1/meta-data", ""},
		{"GET", "/metadata/vm-1/user-data", ""},
		{"GET", "/metadata/vm-1/vendor-data", ""},
		{"GET", "/metadata/vm-1/network-config", ""},
		{"GET", "/agent/vm-1/task", ""},
		{"POST", "/agent/vm-1/facts", `{"cpus": 2}`},
		{"POST", "/agent/vm-1/progress", `{"phase": "write", "bytesWritten": 1, "totalBytes": 2}`},
		{"POST", "/agent/vm-1/result", `{"success": true}`},
	}
	call := func(method, path, body string, auth ...string) int {
		args := append([]string{"-X", method}, auth...)
		if body != "" {
			args = append(args, "-H", "Content-Type: application/json", "--data", body)
		}
		code, _ := curl(t, append(args, ts.URL+path)...)
		return code
	}
	for _, e := range endpoints {
		bad := map[string][]string{
			"missing":          nil,
			"wrong":            {"-H", "Authorization: Bearer " + strings.Repeat("A", 43)},
			"machine B's":      {"-H", "Authorization: Bearer " + tok2},
			"not bearer":       {"-H", "Authorization: Basic " + tok1},
			"empty bearer":     {"-H", "Authorization: Bearer "},
			"query of B":       nil,
			"header wins":      {"-H", "Authorization: Bearer nope"},
			"header of B wins": {"-H", "Authorization: Bearer " + tok2},
		}
		for name, auth := range bad {
			path := e.path
			if name == "query of B" {
				path += "?token=" + tok2
			}
			if name == "header wins" || name == "header of B wins" {
				path += "?token=" + tok1
			}
			if code := call(e.method, path, e.body, auth...); code != 403 {
				t.Errorf("%s %s with %s token: %d, want 403", e.method, e.path, name, code)
			}
		}
		want := 200
		if e.method == "POST" {
			want = 204
		}
		if code := call(e.method, e.path, e.body, "-H", "Authorization: Bearer "+tok1); code != want {
			t.Errorf("%s %s with its token: %d, want %d", e.method, e.path, code, want)
		}
		if code := call(e.method, e.path+"?token="+tok1, e.body); code != want {
			t.Errorf("%s %s with ?token=: %d, want %d", e.method, e.path, code, want)
		}
	}

	// Expired: one second before the TTL it works, at the TTL it does not.
	ts.clock.Add(DefaultTokenTTL - time.Second)
	if code := call("GET", "/metadata/vm-1/meta-data", "", "-H", "Authorization: Bearer "+tok1); code != 200 {
		t.Errorf("token before expiry: %d", code)
	}
	ts.clock.Add(time.Second)
	for _, e := range endpoints {
		if code := call(e.method, e.path, e.body, "-H", "Authorization: Bearer "+tok1); code != 403 {
			t.Errorf("%s %s with an expired token: %d, want 403", e.method, e.path, code)
		}
	}
	// Names that are no machine's.
	for _, p := range []string{"/metadata/a%2Fb/meta-data", "/agent/VM-1/task", "/metadata/..%2F/user-data"} {
		if code := call("GET", p+"?token="+tok1, ""); code != 404 {
			t.Errorf("%s: %d, want 404", p, code)
		}
	}
	// A machine that was never issued a token.
	if code := call("GET", "/metadata/vm-3/meta-data", "", "-H", "Authorization: Bearer "+tok1); code != 403 {
		t.Errorf("vm-3 without a token: %d", code)
	}
}

func TestAgentAPI(t *testing.T) {
	t.Parallel()
	inv := loadInventory(t, "../../examples/lab")
	b := boottest.New(inv, nil)
	ts := newTestServer(t, b)
	host := strings.TrimPrefix(ts.URL, "http://")
	b.SetPurpose("vm-1", agentapi.PurposeDeploy)
	b.Pending(t, "vm-1", "t1", agentapi.PurposeDeploy)
	_, s := curl(t, ts.URL+"/boot/"+vm1MAC+"/script.ipxe")
	auth := []string{"-H", "Authorization: Bearer " + tokenOf(t, s)}

	code, body := curl(t, append(auth, ts.URL+"/agent/vm-1/task")...)
	var task agentapi.Task
	if err := json.Unmarshal([]byte(body), &task); code != 200 || err != nil {
		t.Fatalf("task: %d %v %s", code, err, body)
	}
	disk := inv.Images["debian-12"].Spec.Disk
	if task.Purpose != agentapi.PurposeDeploy || task.Image == nil ||
		task.Image.URL != "http://"+host+"/images/sha256/"+disk.SHA256+"/debian-12-generic-amd64.raw.gz" ||
		task.Image.SHA256 != disk.SHA256 || task.Image.Format != "raw.gz" || task.RootDisk == nil || task.RootDisk.Prefer != "first" ||
		task.MetadataURL != "http://"+host+"/metadata/vm-1/" {
		t.Errorf("deploy task: %s", body)
	}

	b.SetPurpose("vm-1", agentapi.PurposeErase)
	_, body = curl(t, append(auth, ts.URL+"/agent/vm-1/task")...)
	if !strings.Contains(body, `"purpose":"erase"`) || !strings.Contains(body, `"erase":"quick"`) {
		t.Errorf("erase task: %s", body)
	}

	post := func(what, data string) (int, string) {
		return curlIn(t, data, append(auth, "-H", "Content-Type: application/json", "--data-binary", "@-", ts.URL+"/agent/vm-1/"+what)...)
	}
	cases := []struct {
		what, data string
		code       int
		msg        string
	}{
		{"progress", `{"phase":"write","bytesWritten":10,"totalBytes":100}`, 204, ""},
		{"progress", `{"phase":"write","bytesWriten":10}`, 400, `unknown field "bytesWriten"`},
		{"progress", `{"phase":"write"} {}`, 400, "more than one value"},
		{"progress", `{"phase":""}`, 400, "phase"},
		{"progress", `{"phase":"w","bytesWritten":-1}`, 400, "negative"},
		{"progress", ``, 400, "empty body"},
		{"result", `{"success":true}`, 204, ""},
		{"result", `{"success":false,"reason":"disk not found"}`, 204, ""},
		{"result", `{"success":false}`, 400, "reason"},
		{"result", `{"reason":"x"}`, 400, `"success" is required`},
		{"result", `{"success":"yes"}`, 400, "invalid JSON"},
		{"facts", `{"disks":[{"name":"sda","size":1000}]}`, 204, ""},
		{"facts", `[1,2]`, 400, "facts"},
		{"facts", `null`, 400, "object"},
		{"facts", `{"a":` + strings.Repeat(" ", MaxFactsBytes) + `1}`, 413, "larger than"},
		{"progress", `{"phase":"` + strings.Repeat("x", MaxReportBytes) + `"}`, 413, "larger than"},
		{"reboot", `{}`, 404, "no agent endpoint"},
	}
	for _, c := range cases {
		code, msg := post(c.what, c.data)
		if code != c.code || !strings.Contains(msg, c.msg) {
			t.Errorf("%s %.60q: %d %q, want %d %q", c.what, c.data, code, msg, c.code, c.msg)
		}
	}
	got := b.Reports("vm-1")
	if len(got) != 4 || got[0].Progress == nil || got[0].Progress.BytesWritten != 10 || got[1].Result == nil || !got[1].Result.Success ||
		got[2].Result.Reason != "disk not found" || string(got[3].Facts) != `{"disks":[{"name":"sda","size":1000}]}` {
		t.Errorf("stored reports: %+v", got)
	}
	ev := strings.Join(b.Events(), "\n")
	for _, want := range []string{"vm-1 agent-report progress write 10/100", "vm-1 agent-report result failure: disk not found", "vm-1 agent-report facts"} {
		if !strings.Contains(ev, want) {
			t.Errorf("timeline lacks %q:\n%s", want, ev)
		}
	}
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	b := boottest.New(loadInventory(t, "../../examples/lab"), nil)
	ts := newTestServer(t, b)
	b.Pending(t, "vm-1", "t1", agentapi.PurposeCommission)
	b.Pending(t, "vm-2", "t2", agentapi.PurposeCommission)
	curl(t, ts.URL+"/boot/"+vm1MAC+"/script.ipxe")
	curl(t, ts.URL+"/boot/"+vm2MAC+"/script.ipxe")
	curl(t, ts.URL+"/metadata/vm-1/meta-data")
	curl(t, ts.URL+"/agent/vm-1/task")
	curl(t, ts.URL+"/favicon.ico")
	for _, c := range []struct {
		kind, code string
		want       float64
	}{{"script", "200", 2}, {"metadata", "403", 1}, {"agent", "403", 1}, {"other", "404", 1}, {"agent", "200", 0}} {
		got := testutil.ToFloat64(ts.metrics.Requests(c.kind, c.code))
		if got != c.want {
			t.Errorf("kiln_http_boot_requests_total{kind=%q,code=%q} = %v, want %v", c.kind, c.code, got, c.want)
		}
	}
	if n, err := testutil.GatherAndCount(ts.reg, "kiln_http_boot_request_seconds"); err != nil || n != len(MetricKinds) {
		t.Errorf("kiln_http_boot_request_seconds series: %d %v", n, err)
	}
}

func TestMetricsExposition(t *testing.T) {
	t.Parallel()
	b := boottest.New(loadInventory(t, "../../examples/lab"), nil)
	ts := newTestServer(t, b)
	curl(t, ts.URL+"/boot/"+vm1MAC+"/script.ipxe")
	curl(t, ts.URL+"/metadata/vm-1/meta-data")
	var want strings.Builder
	want.WriteString("# HELP kiln_http_boot_requests_total HTTP boot server requests by kind (script, metadata, agent, os, other) and status code.\n")
	want.WriteString("# TYPE kiln_http_boot_requests_total counter\n")
	for _, k := range MetricKinds {
		for _, c := range MetricCodes {
			v := 0
			if k == "script" && c == 200 || k == "metadata" && c == 403 {
				v = 1
			}
			fmt.Fprintf(&want, "kiln_http_boot_requests_total{code=\"%d\",kind=\"%s\"} %d\n", c, k, v)
		}
	}
	if err := testutil.GatherAndCompare(ts.reg, strings.NewReader(want.String()), "kiln_http_boot_requests_total"); err != nil {
		t.Error(err)
	}
}

func TestBaseURLAndHost(t *testing.T) {
	t.Parallel()
	b := boottest.New(loadInventory(t, "../../examples/lab"), nil)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for name, c := range map[string]struct {
		base, host, want string
	}{
		"base URL":    {"http://10.42.0.1:8080/", "ignored:1", "kiln.url=http://10.42.0.1:8080 "},
		"host header": {"", "10.42.0.1:8080", "kiln.url=http://10.42.0.1:8080 "},
		"odd host":    {"", "a\"b", "kiln.url=http://localhost "},
		"ipv6 host":   {"", "[fd00::1]:8080", "kiln.url=http://[fd00::1]:8080 "},
	} {
		b.Pending(t, "vm-2", "t-"+name, agentapi.PurposeCommission)
		s := New(Options{BaseURL: c.base}, b, nil, log)
		req := httptest.NewRequest("GET", "/boot/"+vm2MAC+"/script.ipxe", nil)
		req.Host = c.host
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, req)
		if rec.Code != 200 || !strings.Contains(rec.Body.String(), c.want) {
			t.Errorf("%s: %d, want %q in\n%s", name, rec.Code, c.want, rec.Body)
		}
	}
}

// failing is a backend whose status and token store are unavailable.
type failing struct{ *boottest.Backend }

func (failing) Purpose(context.Context, string) (string, error) {
	return "", errors.New("etcd unavailable")
}

func (failing) Tokens() TokenStore { return failingTokens{} }

type failingTokens struct{}

func (failingTokens) Put(context.Context, string, inventory.BootToken) error {
	return errors.New("etcd unavailable")
}

func (failingTokens) PutLeased(context.Context, string, inventory.BootToken, clientv3.LeaseID) error {
	return errors.New("etcd unavailable")
}

func (failingTokens) Get(context.Context, string) (inventory.BootToken, error) {
	return inventory.BootToken{}, errors.New("etcd unavailable")
}

func (failingTokens) Update(context.Context, string, func(*inventory.BootToken) error) error {
	return errors.New("etcd unavailable")
}

func TestBackendUnavailable(t *testing.T) {
	t.Parallel()
	b := failing{boottest.New(loadInventory(t, "../../examples/lab"), nil)}
	s := New(Options{}, b, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	for _, p := range []string{
		"/boot/" + vm1MAC + "/script.ipxe",        // purpose unknown
		"/boot/aa:bb:cc:dd:ee:ff/script.ipxe",     // token not stored
		"/metadata/vm-1/meta-data?token=whatever", // token not readable
	} {
		if code, body := curl(t, ts.URL+p); code != 503 {
			t.Errorf("%s: %d %s, want 503", p, code, body)
		}
	}
}
