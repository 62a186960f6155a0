package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/etcdtest/invtest"
	"github.com/kilnhq/kiln/reconciler/api"
	"github.com/kilnhq/kiln/spec/kilntest"
	"gopkg.in/yaml.v3"
)

// fleetDoc is a rack, a subnet and n machines m000..; even ones in rack
// label role=worker.
func fleetDoc(n int) string {
	var b strings.Builder
	b.WriteString(`apiVersion: kiln.dev/v1alpha1
kind: Rack
metadata: {name: r1}
spec: {allowPlaintextPasswords: true}
---
apiVersion: kiln.dev/v1alpha1
kind: Subnet
metadata: {name: net}
spec:
  cidr: 10.77.0.0/16
  rack: r1
  mode: relay
  gateway: 10.77.0.1
  dynamicRange: {start: 10.77.200.1, end: 10.77.250.1}
`)
	for i := range n {
		role := "storage"
		if i%2 == 0 {
			role = "worker"
		}
		fmt.Fprintf(&b, `---
apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: m%03d, labels: {role: %s}}
spec:
  interfaces: [{name: eno1, mac: "52:54:00:77:%02x:%02x", subnet: net, ip: auto}]
  bmc: {driver: ipmi, address: 10.78.%d.%d, username: admin, password: hunter2}
`, i, role, i/256, i%256, i/250, i%250+1)
	}
	return b.String()
}

type env struct {
	t      *testing.T
	store  *inventory.Store
	srv    *httptest.Server
	api    *api.Server
	tokens map[string]string // by role, and "revoked", "expired"
}

func newEnv(t *testing.T, machines int) *env {
	t.Helper()
	store, _, _ := invtest.Start(t, fleetDoc(machines))
	e := &env{t: t, store: store, tokens: map[string]string{}}
	e.api = api.New(api.Config{Store: store, Sync: func() {}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.api.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	e.srv = httptest.NewServer(e.api.Handler())
	t.Cleanup(e.srv.Close)
	now := time.Now()
	for _, r := range inventory.Roles {
		e.tokens[r] = e.token(r, r, 0, now)
	}
	e.tokens["revoked"] = e.token("gone", inventory.RoleOperator, 0, now)
	if _, err := store.RevokeAPIToken(context.Background(), "gone", now); err != nil {
		t.Fatal(err)
	}
	e.tokens["expired"] = e.token("old", inventory.RoleOperator, time.Millisecond, now.Add(-time.Hour))
	// Tokens are admitted once the API's watch brings their records.
	kilntest.Eventually(t, 10*time.Second, "the tokens admitted", func() bool {
		code, _ := e.do("GET", "/api/v1/whoami", e.tokens[inventory.RoleOrchestrator])
		return code == 200
	})
	return e
}

func (e *env) token(name, role string, ttl time.Duration, now time.Time) string {
	e.t.Helper()
	tok, _, err := e.store.CreateAPIToken(context.Background(), name, role, ttl, now)
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

func (e *env) do(method, path, token string) (int, []byte) {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.srv.URL+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (e *env) putStatus(name string, st inventory.MachineStatus) {
	e.t.Helper()
	b, _ := json.Marshal(st)
	if _, err := e.store.Client().Put(context.Background(), e.store.Keys().MachineStatus(name), string(b)); err != nil {
		e.t.Fatal(err)
	}
}

// Every route × no token, each role, a revoked and an expired token.
func TestAuthMatrix(t *testing.T) {
	e := newEnv(t, 3)
	e.putStatus("m001", inventory.MachineStatus{Phase: "failed-deploying", Rack: "r1"})
	concrete := func(route string) (string, string) {
		method, path, _ := strings.Cut(route, " ")
		path = strings.ReplaceAll(strings.ReplaceAll(path, "{name}", "m001"), "/events", "/events?machine=m001")
		return method, strings.ReplaceAll(path, "/power", "/power?action=off")
	}
	for _, route := range e.api.Routes() {
		method, path := concrete(route)
		write := method != "GET"
		for who, want := range map[string]func(int) bool{
			"":             func(c int) bool { return c == 401 },
			"revoked":      func(c int) bool { return c == 401 },
			"expired":      func(c int) bool { return c == 401 },
			"viewer":       func(c int) bool { return (write && c == 403) || (!write && c < 300) },
			"operator":     func(c int) bool { return c < 300 || c == 409 },
			"orchestrator": func(c int) bool { return c < 300 || c == 409 },
		} {
			if path == "/api/v1/watch" && (who == "viewer" || who == "operator" || who == "orchestrator") {
				// A stream: checked by its status only.
				if code := e.streamStatus(path, e.tokens[who]); !want(code) {
					t.Errorf("%s as %q: %d", route, who, code)
				}
				continue
			}
			code, body := e.do(method, path, e.tokens[who])
			if !want(code) {
				t.Errorf("%s as %q: %d %s", route, who, code, body)
			}
			if code >= 400 {
				var er api.Error
				if json.Unmarshal(body, &er) != nil || er.Error == "" {
					t.Errorf("%s as %q: %d without a JSON error: %s", route, who, code, body)
				}
			}
		}
	}
	if code, _ := e.do("GET", "/api/v1/machines", "kiln_aaaaaaaaaaaaaaaa_"+strings.Repeat("a", 48)); code != 401 {
		t.Errorf("a made-up token: %d", code)
	}
	// The retry went through, and its event names the token.
	evs, _, _ := e.store.Events(context.Background(), "m001")
	if !slices.ContainsFunc(evs, func(ev inventory.Event) bool {
		return ev.Reason == "RetryRequested" && strings.Contains(ev.Message, "token operator")
	}) {
		t.Errorf("no RetryRequested event naming the token: %+v", evs)
	}
	req, err := inventory.GetJSON[inventory.SyncRequest](context.Background(), e.store, e.store.Keys().SyncRequest("default"))
	if err != nil || req.By == "" {
		t.Errorf("no sync request in etcd: %+v %v", req, err)
	}
}

// streamStatus opens the watch and returns its status code.
func (e *env) streamStatus(path, token string) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", e.srv.URL+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// A revoked token stops working within a second: the API watches the
// token records.
func TestRevokedWithinASecond(t *testing.T) {
	e := newEnv(t, 1)
	tok := e.token("ci", inventory.RoleViewer, time.Hour, time.Now())
	kilntest.Eventually(t, 5*time.Second, "the new token admitted", func() bool {
		code, _ := e.do("GET", "/api/v1/whoami", tok)
		return code == 200
	})
	if _, err := e.store.RevokeAPIToken(context.Background(), "ci", time.Now()); err != nil {
		t.Fatal(err)
	}
	kilntest.Eventually(t, time.Second, "the revoked token refused", func() bool {
		code, _ := e.do("GET", "/api/v1/whoami", tok)
		return code == 401
	})
}

// Lists are paged by name and filtered; secrets never leave.
func TestMachinesListAndGet(t *testing.T) {
	e := newEnv(t, 25)
	e.putStatus("m003", inventory.MachineStatus{Phase: "deployed", Rack: "r1", DeployedImage: "debian"})
	kilntest.Eventually(t, 5*time.Second, "the status in the cache", func() bool {
		_, b := e.do("GET", "/api/v1/machines?phase=deployed", e.tokens["viewer"])
		return strings.Contains(string(b), "m003")
	})
	var names []string
	next := ""
	for pages := 0; ; pages++ {
		code, b := e.do("GET", "/api/v1/machines?limit=10&continue="+next, e.tokens["viewer"])
		var l api.List[api.MachineSummary]
		if code != 200 || json.Unmarshal(b, &l) != nil || pages > 5 {
			t.Fatalf("page %d: %d %s", pages, code, b)
		}
		for _, m := range l.Items {
			names = append(names, m.Name)
		}
		if next = l.Continue; next == "" {
			break
		}
	}
	if len(names) != 25 || !slices.IsSorted(names) || slices.Compact(slices.Clone(names)) == nil {
		t.Fatalf("paged names: %v", names)
	}
	_, b := e.do("GET", "/api/v1/machines?label=role=worker&rack=r1", e.tokens["viewer"])
	var l api.List[api.MachineSummary]
	json.Unmarshal(b, &l)
	if len(l.Items) != 13 {
		t.Errorf("role=worker: %d machines, want 13", len(l.Items))
	}
	code, b := e.do("GET", "/api/v1/machines/m003", e.tokens["viewer"])
	if code != 200 || !strings.Contains(string(b), `"deployedImage":"debian"`) || strings.Contains(string(b), "hunter2") {
		t.Errorf("get m003: %d %s", code, b)
	}
	if code, _ := e.do("GET", "/api/v1/machines/nope", e.tokens["viewer"]); code != 404 {
		t.Errorf("get nope: %d", code)
	}
	for _, bad := range []string{"/api/v1/machines?limit=0", "/api/v1/machines?limit=x", "/api/v1/machines?label=x", "/api/v1/events?machine=../x", "/api/v1/events?machine=m001&since=yesterday"} {
		if code, _ := e.do("GET", bad, e.tokens["viewer"]); code != 400 {
			t.Errorf("%s: %d, want 400", bad, code)
		}
	}
}

// sse reads a watch stream.
type sse struct {
	cancel func()
	events chan [3]string // id, event, data
}

func (e *env) openWatch(since string) (*sse, int) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", e.srv.URL+"/api/v1/watch", nil)
	req.Header.Set("Authorization", "Bearer "+e.tokens["viewer"])
	if since != "" {
		req.Header.Set("Last-Event-ID", since)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		resp.Body.Close()
		cancel()
		return nil, resp.StatusCode
	}
	s := &sse{cancel: func() { cancel(); resp.Body.Close() }, events: make(chan [3]string, 1<<16)}
	go func() {
		defer close(s.events)
		sc := bufio.NewScanner(resp.Body)
		var cur [3]string
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if cur[1] != "" {
					s.events <- cur
				}
				cur = [3]string{}
			case strings.HasPrefix(line, "id: "):
				cur[0] = line[4:]
			case strings.HasPrefix(line, "event: "):
				cur[1] = line[7:]
			case strings.HasPrefix(line, "data: "):
				cur[2] = line[6:]
			}
		}
	}()
	return s, 200
}

// The watch: a client that drops and reconnects with Last-Event-ID gets
// every change made meanwhile, none lost; one resuming from before the
// kept changes gets 410.
func TestWatchResumesWithoutLoss(t *testing.T) {
	e := newEnv(t, 20)
	w, _ := e.openWatch("")
	hello := <-w.events
	if hello[1] != "hello" || hello[0] == "" {
		t.Fatalf("first event %v", hello)
	}
	seen := map[string]int{} // machine → highest attempt seen
	last := hello[0]
	read := func(w *sse, want int) {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for n := 0; n < want; {
			select {
			case ev, ok := <-w.events:
				if !ok {
					t.Fatalf("stream ended after %d of %d", n, want)
				}
				if ev[0] != "" {
					last = ev[0]
				}
				if ev[1] != "machine" {
					continue
				}
				var c api.Change
				if err := json.Unmarshal([]byte(ev[2]), &c); err != nil || c.Machine == nil {
					t.Fatalf("change %s: %v", ev[2], err)
				}
				attempt, _ := strconv.Atoi(c.Machine.Message)
				if attempt > seen[c.Name] {
					seen[c.Name] = attempt
					n++
				}
			case <-deadline:
				t.Fatalf("%d of %d changes within 30 s", n, want)
			}
		}
	}
	for i := range 20 {
		e.putStatus(fmt.Sprintf("m%03d", i), inventory.MachineStatus{Phase: "ready", Message: "1"})
	}
	read(w, 20)
	w.cancel()
	for i := range 20 { // while nobody watches
		e.putStatus(fmt.Sprintf("m%03d", i), inventory.MachineStatus{Phase: "deploying", Message: "2"})
	}
	w2, code := e.openWatch(last)
	if code != 200 {
		t.Fatalf("resume from %s: %d", last, code)
	}
	defer w2.cancel()
	read(w2, 20)
	for i := range 20 {
		if n := seen[fmt.Sprintf("m%03d", i)]; n != 2 {
			t.Errorf("m%03d: last change seen %d, want 2", i, n)
		}
	}
	if _, code := e.openWatch("1"); code != 410 {
		t.Errorf("resume from revision 1 (before the cache): %d, want 410", code)
	}
}

// docs/api.yaml documents every route and only routes that exist.
func TestOpenAPIDocumentsEveryRoute(t *testing.T) {
	b, err := os.ReadFile("../../docs/api.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		OpenAPI string                    `yaml:"openapi"`
		Paths   map[string]map[string]any `yaml:"paths"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("docs/api.yaml: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Errorf("openapi: %q", doc.OpenAPI)
	}
	var documented []string
	for path, ops := range doc.Paths {
		for method := range ops {
			if method == "parameters" {
				continue
			}
			documented = append(documented, strings.ToUpper(method)+" "+path)
		}
	}
	served := servedRoutes()
	slices.Sort(documented)
	slices.Sort(served)
	for _, r := range served {
		if !slices.Contains(documented, r) {
			t.Errorf("%s is served but not in docs/api.yaml", r)
		}
	}
	for _, r := range documented {
		if !slices.Contains(served, r) {
			t.Errorf("%s is in docs/api.yaml but not served", r)
		}
	}
}

func servedRoutes() []string { return api.New(api.Config{}).Routes() }

// Power through the API: recorded for the region leader with who asked;
// a working phase refuses unless forced; a bad action is a 400.
func TestPowerRequest(t *testing.T) {
	e := newEnv(t, 2)
	e.putStatus("m000", inventory.MachineStatus{Phase: "deployed", Rack: "r1"})
	e.putStatus("m001", inventory.MachineStatus{Phase: "deploying", Rack: "r1"})
	op := e.tokens["operator"]
	if code, b := e.do("POST", "/api/v1/machines/m000/power?action=off", op); code != 202 {
		t.Fatalf("off: %d %s", code, b)
	}
	st, err := inventory.GetJSON[inventory.MachineStatus](context.Background(), e.store, e.store.Keys().MachineStatus("m000"))
	if err != nil || st.PowerRequest == nil || st.PowerRequest.Action != "off" || st.PowerRequest.By != "operator" || st.Phase != "deployed" {
		t.Fatalf("status after the request: %+v %v", st, err)
	}
	if code, b := e.do("POST", "/api/v1/machines/m001/power?action=cycle", op); code != 409 || !strings.Contains(string(b), "deploying") {
		t.Errorf("cycle while deploying: %d %s", code, b)
	}
	if code, _ := e.do("POST", "/api/v1/machines/m001/power?action=cycle&force=true", op); code != 202 {
		t.Errorf("forced cycle: %d", code)
	}
	for _, bad := range []string{"/api/v1/machines/m000/power?action=reboot", "/api/v1/machines/m000/power"} {
		if code, _ := e.do("POST", bad, op); code != 400 {
			t.Errorf("%s: %d, want 400", bad, code)
		}
	}
	if code, _ := e.do("POST", "/api/v1/machines/nope/power?action=on", op); code != 404 {
		t.Errorf("no machine: %d", code)
	}
	evs, _, _ := e.store.Events(context.Background(), "m001")
	var reasons []string
	for _, ev := range evs {
		reasons = append(reasons, ev.Reason)
	}
	if !slices.Contains(reasons, "PowerRefused") || !slices.Contains(reasons, "PowerRequested") {
		t.Errorf("m001 events %v, want PowerRefused and PowerRequested", reasons)
	}
}
