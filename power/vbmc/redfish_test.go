package vbmc_test

import (
	"context"
	"crypto/tls"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/power/vbmc"
	"github.com/kilnhq/kiln/power/vbmc/vbmctest"
	"github.com/kilnhq/kiln/spec/kilntest"
	"github.com/stmcginnis/gofish"
	"github.com/stmcginnis/gofish/schemas"
)

// redfishtool runs redfishtool against rhost (host:port).
func redfishtool(t *testing.T, rhost, pass string, args ...string) (string, error) {
	t.Helper()
	if pass == "" {
		pass = vbmctest.Password
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a := append([]string{"-r", rhost, "-u", vbmctest.Username, "-p", pass, "-T", "20"}, args...)
	out, err := exec.CommandContext(ctx, "redfishtool", a...).CombinedOutput()
	return string(out), err
}

func TestRedfishTool(t *testing.T) {
	needTool(t, "redfishtool")
	m := vbmc.NewMemory()
	b := vbmctest.Start(t, m)
	plain := strings.TrimPrefix(b.RedfishURL(), "http://")
	secure := strings.TrimPrefix(b.RedfishTLSURL(), "https://")
	run := func(rhost string, args ...string) string {
		t.Helper()
		out, err := redfishtool(t, rhost, "", args...)
		if err != nil {
			t.Fatalf("redfishtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}

	// HTTP, Basic authentication.
	out := run(plain, "-S", "Never", "-A", "Basic", "Systems", "list")
	if !strings.Contains(out, `"/redfish/v1/Systems/vm-1"`) || !strings.Contains(out, `"Members@odata.count": 1`) {
		t.Errorf("Systems list:\n%s", out)
	}
	run(plain, "-S", "Never", "-A", "Basic", "Systems", "-I", "vm-1", "reset", "On")
	waitState(t, m, vbmc.On, time.Second)
	out = run(plain, "-S", "Never", "-A", "Basic", "Systems", "-I", "vm-1", "get", "-P", "PowerState")
	if !strings.Contains(out, `"PowerState": "On"`) {
		t.Errorf("PowerState after reset On:\n%s", out)
	}
	run(plain, "-S", "Never", "-A", "Basic", "Systems", "-I", "vm-1", "reset", "ForceOff")
	waitState(t, m, vbmc.Off, time.Second)

	// HTTPS, with a session (login, then logout at exit).
	run(secure, "-S", "Always", "-A", "Session", "Systems", "-1", "setBootOverride", "Once", "Pxe")
	if got := b.Boot(); got.Enabled != vbmc.BootOnce || got.Target != vbmc.TargetPxe {
		t.Errorf("boot after setBootOverride Once Pxe: %+v", got)
	}
	run(secure, "-S", "Always", "-A", "Session", "Systems", "-I", "vm-1", "reset", "On")
	waitState(t, m, vbmc.On, time.Second)
	if lb := m.Stats().LastBoot; !lb.Network() {
		t.Errorf("started with %v, want a network boot", lb)
	}
	run(secure, "-S", "Always", "-A", "Session", "Systems", "-I", "vm-1", "reset", "GracefulShutdown")
	waitState(t, m, vbmc.Off, time.Second)
	if resp, v := request(t, b, "GET", "/vbmc/state", "", ""); resp.StatusCode != 200 || v["redfishSessions"] != 0.0 {
		t.Errorf("sessions left after redfishtool logged out: %v", v)
	}

	// Wrong password, Basic and session.
	if out, err := redfishtool(t, plain, "wrong", "-S", "Never", "-A", "Basic", "Systems", "list"); err == nil {
		t.Errorf("wrong password accepted:\n%s", out)
	}
	if out, err := redfishtool(t, secure, "wrong", "-S", "Always", "-A", "Session", "Systems", "list"); err == nil {
		t.Errorf("wrong password accepted for a session:\n%s", out)
	}
	// A reset type the BMC does not offer is refused by redfishtool itself.
	if out, err := redfishtool(t, plain, "", "-S", "Never", "-A", "Basic", "Systems", "-I", "vm-1", "reset", "Nmi"); err == nil {
		t.Errorf("reset Nmi accepted:\n%s", out)
	}
}

func TestRedfishResources(t *testing.T) {
	b := vbmctest.Start(t, nil)

	for _, p := range []string{"/redfish/v1/", "/redfish/v1"} {
		resp, v := request(t, b, "GET", p, "none", "")
		if resp.StatusCode != 200 || v["@odata.id"] != "/redfish/v1/" || v["@odata.type"] == nil || v["RedfishVersion"] == nil {
			t.Fatalf("service root %s: %d %v", p, resp.StatusCode, v)
		}
		if resp.Header.Get("OData-Version") != "4.0" || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
			t.Errorf("service root headers: %v", resp.Header)
		}
		links := v["Links"].(map[string]any)["Sessions"].(map[string]any)
		if links["@odata.id"] != "/redfish/v1/SessionService/Sessions" || v["Systems"].(map[string]any)["@odata.id"] != "/redfish/v1/Systems" ||
			v["SessionService"].(map[string]any)["@odata.id"] != "/redfish/v1/SessionService" {
			t.Errorf("service root links: %v", v)
		}
	}
	if resp, v := request(t, b, "GET", "/redfish", "none", ""); resp.StatusCode != 200 || v["v1"] != "/redfish/v1/" {
		t.Errorf("GET /redfish: %d %v", resp.StatusCode, v)
	}

	_, v := request(t, b, "GET", "/redfish/v1/Systems", "", "")
	members := v["Members"].([]any)
	if len(members) != 1 || members[0].(map[string]any)["@odata.id"] != "/redfish/v1/Systems/vm-1" || v["Members@odata.count"] != 1.0 {
		t.Fatalf("Systems: %v", v)
	}
	_, sys := request(t, b, "GET", "/redfish/v1/Systems/vm-1", "", "")
	if sys["PowerState"] != "Off" || sys["Id"] != "vm-1" || sys["@odata.type"] != "#ComputerSystem.v1_13_0.ComputerSystem" {
		t.Errorf("system: %v", sys)
	}
	boot := sys["Boot"].(map[string]any)
	if boot["BootSourceOverrideEnabled"] != "Disabled" || boot["BootSourceOverrideTarget"] != "None" || boot["BootSourceOverrideMode"] != "Legacy" {
		t.Errorf("boot: %v", boot)
	}
	if av := boot["BootSourceOverrideTarget@Redfish.AllowableValues"].([]any); len(av) != 3 {
		t.Errorf("allowable targets: %v", av)
	}
	reset := sys["Actions"].(map[string]any)["#ComputerSystem.Reset"].(map[string]any)
	if reset["target"] != "/redfish/v1/Systems/vm-1/Actions/ComputerSystem.Reset" || len(reset["ResetType@Redfish.AllowableValues"].([]any)) == 0 {
		t.Errorf("reset action: %v", reset)
	}
	_, ss := request(t, b, "GET", "/redfish/v1/SessionService", "", "")
	if ss["SessionTimeout"] != 1800.0 || ss["Sessions"].(map[string]any)["@odata.id"] != "/redfish/v1/SessionService/Sessions" {
		t.Errorf("session service: %v", ss)
	}
}

func TestRedfishStatusCodes(t *testing.T) {
	m := vbmc.NewMemory()
	b := vbmctest.Start(t, m)
	const sys = "/redfish/v1/Systems/vm-1"
	for _, tc := range []struct {
		method, path, auth, body string
		code                     int
		messageID                string
	}{
		{"GET", "/redfish/v1/Systems", "none", "", 401, "Base.1.0.NoValidSession"},
		{"GET", "/redfish/v1/Systems", "wrong", "", 401, "Base.1.0.NoValidSession"},
		{"GET", "/redfish/v1/Systems", "token:bogus", "", 401, "Base.1.0.NoValidSession"},
		{"GET", "/redfish/v1/Nothing", "none", "", 401, "Base.1.0.NoValidSession"},
		{"GET", "/redfish/v1/Systems/other", "", "", 404, "Base.1.0.ResourceMissingAtURI"},
		{"GET", "/redfish/v1/Nothing", "", "", 404, "Base.1.0.ResourceMissingAtURI"},
		{"GET", "/elsewhere", "none", "", 404, "Base.1.0.ResourceMissingAtURI"},
		{"POST", sys + "/Actions/ComputerSystem.Reset", "", `{"ResetType":"Bogus"}`, 400, "Base.1.0.ActionParameterValueNotInList"},
		{"POST", sys + "/Actions/ComputerSystem.Reset", "", `{"ResetType":`, 400, "Base.1.0.MalformedJSON"},
		{"POST", sys + "/Actions/ComputerSystem.Reset", "", `{}`, 400, "Base.1.0.ActionParameterMissing"},
		{"POST", sys + "/Actions/ComputerSystem.Reset", "", `{"ResetType":"On","Extra":1}`, 400, "Base.1.0.ActionParameterUnknown"},
		{"PATCH", sys, "", `{"Boot":{"BootSourceOverrideTarget":"Floppy"}}`, 400, "Base.1.0.PropertyValueNotInList"},
		{"PATCH", sys, "", `{"Boot":{"BootSourceOverrideEnabled":true}}`, 400, "Base.1.0.PropertyValueTypeError"},
		{"PATCH", sys, "", `{"Boot":{"BootNext":"0001"}}`, 400, "Base.1.0.PropertyUnknown"},
		{"PATCH", sys, "", `{"PowerState":"On"}`, 400, "Base.1.0.PropertyNotWritable"},
		{"PATCH", sys, "", `{}`, 400, "Base.1.0.PropertyMissing"},
		{"PATCH", sys, "", `not json`, 400, "Base.1.0.MalformedJSON"},
		{"DELETE", sys, "", "", 405, "Base.1.0.GeneralError"},
		{"GET", sys + "/Actions/ComputerSystem.Reset", "", "", 405, "Base.1.0.GeneralError"},
		{"POST", "/redfish/v1/", "none", "{}", 405, "Base.1.0.GeneralError"},
		{"POST", "/redfish/v1/SessionService/Sessions", "none", `{"UserName":"admin"}`, 400, "Base.1.0.PropertyMissing"},
		{"POST", "/redfish/v1/SessionService/Sessions", "none", `{"UserName":"admin","Password":"wrong"}`, 401, "Base.1.0.NoValidSession"},
	} {
		resp, v := request(t, b, tc.method, tc.path, tc.auth, tc.body)
		if resp.StatusCode != tc.code {
			t.Errorf("%s %s %s: %d, want %d: %v", tc.method, tc.path, tc.body, resp.StatusCode, tc.code, v)
			continue
		}
		if id := redfishError(t, v); id != tc.messageID {
			t.Errorf("%s %s %s: MessageId %s, want %s", tc.method, tc.path, tc.body, id, tc.messageID)
		}
		if tc.code == 401 && resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("%s %s: 401 without WWW-Authenticate", tc.method, tc.path)
		}
		if tc.code == 405 && resp.Header.Get("Allow") == "" {
			t.Errorf("%s %s: 405 without Allow", tc.method, tc.path)
		}
	}
	if s := m.Stats(); s.Starts != 0 || b.Boot() != (vbmc.Boot{Enabled: vbmc.BootDisabled, Target: vbmc.TargetNone}) {
		t.Errorf("refused requests changed the machine: %+v, boot %+v", s, b.Boot())
	}

	// The good requests.
	resp, v := request(t, b, "PATCH", sys, "", `{"Boot":{"BootSourceOverrideEnabled":"Continuous","BootSourceOverrideTarget":"Pxe","BootSourceOverrideMode":"UEFI","BootSourceOverrideTarget@Redfish.AllowableValues":["ignored"]}}`)
	if resp.StatusCode != 200 || v["Boot"].(map[string]any)["BootSourceOverrideTarget"] != "Pxe" {
		t.Fatalf("PATCH Boot: %d %v", resp.StatusCode, v)
	}
	if got, want := b.Boot(), (vbmc.Boot{Enabled: vbmc.BootContinuous, Target: vbmc.TargetPxe, UEFI: true}); got != want {
		t.Errorf("boot %+v, want %+v", got, want)
	}
	for _, rt := range []struct {
		resetType string
		state     vbmc.PowerState
	}{{"On", vbmc.On}, {"ForceRestart", vbmc.On}, {"PowerCycle", vbmc.On}, {"GracefulShutdown", vbmc.Off}, {"PowerCycle", vbmc.On}, {"ForceOff", vbmc.Off}, {"ForceOn", vbmc.On}, {"PushPowerButton", vbmc.Off}, {"GracefulRestart", vbmc.On}} {
		resp, v := request(t, b, "POST", sys+"/Actions/ComputerSystem.Reset", "", `{"ResetType":"`+rt.resetType+`"}`)
		if resp.StatusCode != 204 {
			t.Fatalf("reset %s: %d %v", rt.resetType, resp.StatusCode, v)
		}
		waitState(t, m, rt.state, 5*time.Second)
	}
	if s := m.Stats(); s.Starts != 5 || s.Resets != 1 || !s.LastBoot.Network() {
		t.Errorf("after the resets: %+v", s)
	}
}

func TestRedfishGracefulRestart(t *testing.T) {
	m := vbmc.NewMemory()
	m.SetGraceful(0, true) // an OS that ignores ACPI
	b := vbmctest.Start(t, m)
	const reset = "/redfish/v1/Systems/vm-1/Actions/ComputerSystem.Reset"
	request(t, b, "POST", reset, "", `{"ResetType":"On"}`)
	if resp, _ := request(t, b, "POST", reset, "", `{"ResetType":"GracefulRestart"}`); resp.StatusCode != 204 {
		t.Fatalf("GracefulRestart: %d", resp.StatusCode)
	}
	// The OS ignores the request: the machine stays on; a ForceOff
	// overrides the pending restart, which must not turn it on again.
	request(t, b, "POST", reset, "", `{"ResetType":"ForceOff"}`)
	m.SetGraceful(0, false)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := m.WaitState(ctx, vbmc.On); err == nil {
		t.Fatalf("an abandoned graceful restart turned the machine on: %+v", m.Stats())
	}

	// An OS that takes its time: off, then on again.
	m.SetGraceful(50*time.Millisecond, false)
	request(t, b, "POST", reset, "", `{"ResetType":"On"}`)
	request(t, b, "POST", reset, "", `{"ResetType":"GracefulRestart"}`)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	if err := m.WaitState(ctx2, vbmc.Off); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitState(ctx2, vbmc.On); err != nil {
		t.Fatal(err)
	}
	if s := m.Stats(); s.Starts != 3 {
		t.Errorf("after graceful restart: %+v, want 3 starts", s)
	}
}

func TestRedfishSessions(t *testing.T) {
	b := vbmctest.Start(t, nil)
	resp, v := request(t, b, "POST", "/redfish/v1/SessionService/Sessions", "none", `{"UserName":"admin","Password":"`+vbmctest.Password+`"}`)
	if resp.StatusCode != 201 {
		t.Fatalf("login: %d %v", resp.StatusCode, v)
	}
	token, loc := resp.Header.Get("X-Auth-Token"), resp.Header.Get("Location")
	if token == "" || !strings.HasPrefix(loc, "/redfish/v1/SessionService/Sessions/") || v["Id"] == nil || v["@odata.id"] != loc {
		t.Fatalf("login: token %q, location %q, body %v", token, loc, v)
	}
	if resp, _ := request(t, b, "GET", "/redfish/v1/Systems/vm-1", "token:"+token, ""); resp.StatusCode != 200 {
		t.Fatalf("GET with the session token: %d", resp.StatusCode)
	}
	_, coll := request(t, b, "GET", "/redfish/v1/SessionService/Sessions", "token:"+token, "")
	if coll["Members@odata.count"] != 1.0 {
		t.Errorf("sessions: %v", coll)
	}
	if resp, v := request(t, b, "GET", loc, "token:"+token, ""); resp.StatusCode != 200 || v["UserName"] != "admin" {
		t.Errorf("GET session: %d %v", resp.StatusCode, v)
	}
	if resp, _ := request(t, b, "DELETE", loc, "token:"+token, ""); resp.StatusCode != 204 {
		t.Fatalf("logout: %d", resp.StatusCode)
	}
	if resp, _ := request(t, b, "GET", "/redfish/v1/Systems/vm-1", "token:"+token, ""); resp.StatusCode != 401 {
		t.Errorf("GET after logout: %d, want 401", resp.StatusCode)
	}
	if resp, _ := request(t, b, "DELETE", loc, "", ""); resp.StatusCode != 404 {
		t.Errorf("second logout: %d, want 404", resp.StatusCode)
	}
}

func TestRedfishSessionExpiry(t *testing.T) {
	clock := kilntest.NewClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	b := vbmctest.Start(t, nil, func(c *vbmc.Config) {
		c.SessionTimeout = time.Minute
		c.Now = clock.Now
	})
	login := func() string {
		resp, _ := request(t, b, "POST", "/redfish/v1/SessionService/Sessions", "none", `{"UserName":"admin","Password":"`+vbmctest.Password+`"}`)
		return resp.Header.Get("X-Auth-Token")
	}
	get := func(token string) int {
		resp, _ := request(t, b, "GET", "/redfish/v1/Systems", "token:"+token, "")
		return resp.StatusCode
	}
	_, ss := request(t, b, "GET", "/redfish/v1/SessionService", "", "")
	if ss["SessionTimeout"] != 60.0 {
		t.Errorf("SessionTimeout %v, want 60", ss["SessionTimeout"])
	}

	tok := login()
	// Use keeps a session alive: the timeout counts from the last request.
	for range 3 {
		clock.Add(50 * time.Second)
		if code := get(tok); code != 200 {
			t.Fatalf("a session used every 50s expired: %d", code)
		}
	}
	clock.Add(61 * time.Second)
	if code := get(tok); code != 401 {
		t.Fatalf("a session idle for 61s: %d, want 401", code)
	}
	// Basic authentication is unaffected, and a new login works.
	if resp, _ := request(t, b, "GET", "/redfish/v1/Systems", "", ""); resp.StatusCode != 200 {
		t.Errorf("Basic after expiry: %d", resp.StatusCode)
	}
	if code := get(login()); code != 200 {
		t.Errorf("a new session: %d", code)
	}
}

func TestRedfishTLS(t *testing.T) {
	b := vbmctest.Start(t, nil, func(c *vbmc.Config) { c.CertOut = t.TempDir() + "/cert.pem" })
	trusting := &http.Client{Transport: &http.Transport{TLSClientConfig: b.ClientTLSConfig()}}
	if resp, _ := requestURL(t, trusting, b.RedfishTLSURL()+"/redfish/v1/Systems", "GET", "", ""); resp.StatusCode != 200 {
		t.Fatalf("HTTPS with the BMC's certificate trusted: %d", resp.StatusCode)
	}
	strict := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{}}}
	if _, err := strict.Get(b.RedfishTLSURL() + "/redfish/v1/"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("HTTPS without trusting the certificate: %v, want a certificate error", err)
	}
	if len(b.CertPEM()) == 0 {
		t.Error("no certificate PEM")
	}
}

// TestGofish drives the BMC with gofish, the library of Kiln's Redfish
// driver: session login over HTTPS, discovery, reset, boot override.
func TestGofish(t *testing.T) {
	m := vbmc.NewMemory()
	b := vbmctest.Start(t, m)
	c, err := gofish.Connect(gofish.ClientConfig{
		Endpoint:   b.RedfishTLSURL(),
		Username:   vbmctest.Username,
		Password:   vbmctest.Password,
		HTTPClient: &http.Client{Transport: &http.Transport{TLSClientConfig: b.ClientTLSConfig()}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Logout()
	systems, err := c.Service.Systems()
	if err != nil || len(systems) != 1 {
		t.Fatalf("systems: %v %v", systems, err)
	}
	s := systems[0]
	if s.ID != "vm-1" || s.PowerState != schemas.OffPowerState {
		t.Errorf("system %s is %s", s.ID, s.PowerState)
	}
	if err := s.SetBoot(&schemas.Boot{BootSourceOverrideEnabled: schemas.OnceBootSourceOverrideEnabled, BootSourceOverrideTarget: schemas.PxeBootSource, BootSourceOverrideMode: schemas.UEFIBootSourceOverrideMode}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Reset(schemas.OnResetType); err != nil {
		t.Fatal(err)
	}
	if lb := m.Stats().LastBoot; !lb.Network() || !lb.UEFI || lb.Enabled != vbmc.BootOnce {
		t.Errorf("started with %v", lb)
	}
	if resp, v := request(t, b, "GET", "/vbmc/state", "", ""); resp.StatusCode != 200 || v["redfishSessions"] != 1.0 {
		t.Errorf("gofish's session: %v", v)
	}
}
