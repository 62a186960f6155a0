package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/netboot/dhcp"
)

// browser is an HTTP client with a cookie jar that does not follow
// redirects (the test looks at them).
func browser(t *testing.T) *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func (e *env) form(c *http.Client, path string, v url.Values) *http.Response {
	e.t.Helper()
	req, _ := http.NewRequest("POST", e.srv.URL+path, strings.NewReader(v.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", e.srv.URL)
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func (e *env) page(c *http.Client, path string) (int, string) {
	e.t.Helper()
	resp, err := c.Get(e.srv.URL + path)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// The web view without a browser: the login form, the cookie, the roles,
// the retry form and its event, cross-site posts refused.
func TestWebLoginAndRoles(t *testing.T) {
	e := newEnv(t, 3)
	e.putStatus("m001", inventory.MachineStatus{Phase: "failed-deploying", Rack: "r1", Reason: "disk too small"})
	c := browser(t)
	if code, _ := e.page(c, "/"); code != http.StatusSeeOther {
		t.Fatalf("/ without a cookie: %d, want a redirect to the login", code)
	}
	if resp := e.form(c, "/login", url.Values{"token": {"kiln_nope"}}); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("login with a bad token: %d", resp.StatusCode)
	}
	resp := e.form(c, "/login", url.Values{"token": {e.tokens["viewer"]}})
	var cookie *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == "kiln_token" {
			cookie = ck
		}
	}
	if resp.StatusCode != http.StatusSeeOther || cookie == nil || !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode {
		t.Fatalf("login: %d, cookie %+v", resp.StatusCode, cookie)
	}
	kilntestEventually(t, func() bool {
		code, body := e.page(c, "/machines/m001")
		return code == 200 && strings.Contains(body, "disk too small")
	})
	if _, body := e.page(c, "/machines/m001"); strings.Contains(body, `id="retry"`) {
		t.Error("a viewer sees the retry button")
	}
	if resp := e.form(c, "/machines/m001/retry", nil); resp.StatusCode != http.StatusForbidden {
		t.Errorf("retry as a viewer: %d", resp.StatusCode)
	}
	op := browser(t)
	e.form(op, "/login", url.Values{"token": {e.tokens["operator"]}})
	if _, body := e.page(op, "/machines/m001"); !strings.Contains(body, `id="retry"`) {
		t.Errorf("an operator sees no retry button:\n%s", body)
	}
	// A cross-site form post is refused even with the cookie.
	req, _ := http.NewRequest("POST", e.srv.URL+"/machines/m001/retry", nil)
	req.Header.Set("Origin", "https://evil.example")
	if r, err := op.Do(req); err != nil || r.StatusCode != http.StatusForbidden {
		t.Errorf("cross-site retry: %v %v", r.StatusCode, err)
	}
	req, _ = http.NewRequest("POST", e.srv.URL+"/machines/m001/retry", nil)
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	req.Header.Set("Origin", e.srv.URL) // a browser's word beats a header it also sends
	if r, err := op.Do(req); err != nil || r.StatusCode != http.StatusForbidden {
		t.Errorf("cross-site retry (Sec-Fetch-Site): %v %v", r.StatusCode, err)
	}
	if resp := e.form(op, "/machines/m001/retry", nil); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("retry as an operator: %d", resp.StatusCode)
	}
	evs, _, _ := e.store.Events(context.Background(), "m001")
	if !slices.ContainsFunc(evs, func(ev inventory.Event) bool { return strings.Contains(ev.Message, "web view by token operator") }) {
		t.Errorf("no event of the web retry: %+v", evs)
	}
	// The racks page: DHCP pool use counts live dynamic leases only.
	now := time.Now().UTC()
	for i, l := range []dhcp.Lease{
		{Subnet: "net", IP: netip.MustParseAddr("10.77.200.1"), MAC: "02:00:00:00:00:01", Expires: now.Add(time.Hour), Updated: now},
		{Subnet: "net", IP: netip.MustParseAddr("10.77.200.2"), MAC: "02:00:00:00:00:02", Expires: now.Add(time.Hour), Updated: now},
		{Subnet: "net", IP: netip.MustParseAddr("10.77.200.3"), MAC: "02:00:00:00:00:03", Expires: now.Add(-time.Hour), Updated: now.Add(-2 * time.Hour)},
		{Subnet: "net", IP: netip.MustParseAddr("10.77.0.5"), MAC: "52:54:00:77:00:00", Machine: "m000", Reserved: true, Expires: now.Add(time.Hour), Updated: now},
	} {
		b, _ := json.Marshal(l)
		if _, err := e.store.Client().Put(context.Background(), e.store.Keys().Lease("r1", "net", l.IP.String()), string(b)); err != nil {
			t.Fatal(i, err)
		}
	}
	kilntestEventually(t, func() bool { // the API's cache follows etcd
		_, body := e.page(c, "/racks")
		return strings.Contains(body, "net 2/12801 (0%)") && strings.Contains(body, "<td>4</td>")
	})
	for _, p := range []string{"/source", "/racks", "/static/fleet.js", "/static/kiln.css"} {
		if code, _ := e.page(c, p); code != 200 {
			t.Errorf("%s: %d", p, code)
		}
	}
	if code, _ := e.page(c, "/static/"); code != 404 {
		t.Errorf("/static/ lists: %d", code)
	}
}

func kilntestEventually(t *testing.T, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !ok(); {
		if time.Now().After(deadline) {
			t.Fatal("not reached within 10 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// chromium finds Debian's chromium; without it the test is skipped
// locally and fails in CI (which installs it).
func chromium(t *testing.T) string {
	for _, n := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("no chromium (e2e/deps.sh installs it)")
	}
	t.Skip("no chromium")
	return ""
}

// The web view in headless Chromium: the fleet page's counts, a phase
// change made in etcd on the open page within 2 s without a reload, no
// retry button for a viewer, hostile text shown as text; a screenshot of
// each page (KILN_SCREENSHOTS=dir keeps them).
func TestWebInChromium(t *testing.T) {
	exe := chromium(t)
	e := newEnv(t, 6)
	e.putStatus("m000", inventory.MachineStatus{Phase: "ready", Rack: "r1", PhaseStartedAt: time.Now().UTC()})
	e.putStatus("m001", inventory.MachineStatus{Phase: "failed-deploying", Rack: "r1", Reason: "disk too small", PhaseStartedAt: time.Now().UTC()})
	e.putStatus("m002", inventory.MachineStatus{Phase: "deployed", Rack: "r1", DeployedImage: "debian"})
	e.putStatus("m003", inventory.MachineStatus{Phase: "ready", Rack: "r1",
		Message: `<img src=x onerror="document.title='pwned'"></script><script>document.title='pwned'</script>`})
	kilntestEventually(t, func() bool {
		_, b := e.do("GET", "/api/v1/machines?phase=ready", e.tokens["viewer"])
		return strings.Count(string(b), `"name"`) == 2
	})
	shots := os.Getenv("KILN_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.NoSandbox, chromedp.WindowSize(1280, 800))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	bctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	// The first run starts the browser, on a context without a deadline;
	// each later step gets one.
	if err := chromedp.Do(bctx, chromedp.Navigate(e.srv.URL+"/login")); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		ctx, cancel := context.WithTimeout(bctx, time.Minute)
		defer cancel()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	eval := func(expr string) any {
		t.Helper()
		ctx, cancel := context.WithTimeout(bctx, time.Minute)
		defer cancel()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[any](expr))
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		return v
	}
	text := func(sel string) string {
		t.Helper()
		return fmt.Sprint(eval(`(() => { const e = document.querySelector(` + strconv.Quote(sel) + `); return e ? e.textContent : "<none>"; })()`))
	}
	shot := func(name string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(bctx, time.Minute)
		defer cancel()
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		p := filepath.Join(shots, name+".png")
		if err := os.WriteFile(p, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s", p)
	}
	login := func(token string) {
		t.Helper()
		do("log in", chromedp.Navigate(e.srv.URL+"/login"), chromedp.SendKeys(chromedp.CSS(`input[name="token"]`), token),
			chromedp.Submit(chromedp.CSS(`input[name="token"]`)), chromedp.WaitVisible(chromedp.CSS(`#machines tbody tr`)))
	}

	login(e.tokens["viewer"])
	do("the page's watch connects", func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
		_, err := chromedp.Poll[bool](`document.getElementById("live").textContent === "live"`, chromedp.WithPollingTimeout(10*time.Second))(ctx, tg)
		return chromedp.Void{}, err
	})
	for phase, want := range map[string]string{"ready": "2", "deployed": "1", "failed-deploying": "1", "": "6"} {
		if got := text(`#counts tr[data-rack="r1"] td[data-phase="` + phase + `"]`); got != want {
			t.Errorf("r1 %q: %s, want %s", phase, got, want)
		}
	}
	if first := text(`#machines tbody tr td`); first != "m001" {
		t.Errorf("first row %q, want the failed m001", first)
	}
	// Hostile text is text: no element made from it, no script run.
	if n := eval(`document.querySelectorAll("#machines img, #machines script").length`); fmt.Sprint(n) != "0" || eval(`document.title`) == "pwned" {
		t.Errorf("a hostile message became markup: %v elements, title %v", n, eval(`document.title`))
	}
	shot("fleet")

	// A phase change in etcd reaches the open page within 2 s, no reload.
	eval(`window.kilnMarker = 1`)
	changed := time.Now()
	e.putStatus("m000", inventory.MachineStatus{Phase: "deploying", Rack: "r1", PhaseStartedAt: time.Now().UTC()})
	do("the phase change on the page within 2 s", func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
		_, err := chromedp.Poll[bool](`(() => { const c = document.querySelector('tr[data-name="m000"] .phase-cell'); return !!c && c.textContent === "deploying"; })()`,
			chromedp.WithPollingTimeout(2*time.Second), chromedp.WithPollingInterval(10*time.Millisecond))(ctx, tg)
		return chromedp.Void{}, err
	})
	t.Logf("phase change in etcd → on the open page in %s", time.Since(changed).Round(time.Millisecond))
	if fmt.Sprint(eval(`window.kilnMarker || 0`)) != "1" {
		t.Error("the page reloaded")
	}
	if got := text(`#counts tr[data-rack="r1"] td[data-phase="deploying"]`); got != "1" {
		t.Errorf("deploying count %s after the change", got)
	}

	// A viewer sees no retry button on a failed machine.
	do("machine page", chromedp.Navigate(e.srv.URL+"/machines/m001"), chromedp.WaitVisible(chromedp.CSS(`#phase`)))
	if n := eval(`document.querySelectorAll("#retry").length`); fmt.Sprint(n) != "0" {
		t.Error("a viewer sees the retry button")
	}
	shot("machine")
	for _, p := range []string{"source", "racks"} {
		do(p, chromedp.Navigate(e.srv.URL+"/"+p), chromedp.WaitVisible(chromedp.CSS(`h1`)))
		shot(p)
	}
	// An operator does, and it works.
	login(e.tokens["operator"])
	do("operator's machine page", chromedp.Navigate(e.srv.URL+"/machines/m001"), chromedp.WaitReady(chromedp.CSS(`#phase`)))
	if n := eval(`document.querySelectorAll("#retry").length`); fmt.Sprint(n) != "1" {
		t.Fatalf("an operator sees no retry button: %v", eval(`document.body.innerText`))
	}
	do("operator retry", chromedp.Click(chromedp.CSS(`#retry`)))
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		evs, _, _ := e.store.Events(context.Background(), "m001")
		if slices.ContainsFunc(evs, func(ev inventory.Event) bool { return ev.Reason == "RetryRequested" }) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no RetryRequested event after the click; the page says: %v", eval(`document.body.innerText`))
		}
	}
}
