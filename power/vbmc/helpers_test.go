package vbmc_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/power/vbmc"
	"github.com/kilnhq/kiln/power/vbmc/vbmctest"
)

// needTool skips the test when a client binary is not installed (CI
// installs ipmitool, redfishtool and QEMU).
func needTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s is not installed (apt-get install %s); skipping the test that drives it", name, name)
	}
}

// ipmitool runs ipmitool against b with the test credentials (or pass)
// and returns its combined output.
func ipmitool(t *testing.T, b *vbmc.BMC, iface, pass string, args ...string) (string, error) {
	t.Helper()
	_, port, err := net.SplitHostPort(b.IPMIAddr())
	if err != nil {
		t.Fatal(err)
	}
	if pass == "" {
		pass = vbmctest.Password
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a := append([]string{"-I", iface, "-H", "127.0.0.1", "-p", port, "-U", vbmctest.Username, "-P", pass}, args...)
	out, err := exec.CommandContext(ctx, "ipmitool", a...).CombinedOutput()
	return string(out), err
}

// mustIPMI runs ipmitool over lanplus and fails the test on an error.
func mustIPMI(t *testing.T, b *vbmc.BMC, args ...string) string {
	t.Helper()
	out, err := ipmitool(t, b, "lanplus", "", args...)
	if err != nil {
		t.Fatalf("ipmitool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// request sends an HTTP request to the BMC's plain Redfish endpoint, with
// Basic credentials unless auth is "none" or a token ("token:...").
func request(t *testing.T, b *vbmc.BMC, method, path, auth, body string) (*http.Response, map[string]any) {
	t.Helper()
	return requestURL(t, http.DefaultClient, b.RedfishURL()+path, method, auth, body)
}

func requestURL(t *testing.T, c *http.Client, url, method, auth, body string) (*http.Response, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	switch {
	case auth == "none":
	case strings.HasPrefix(auth, "token:"):
		req.Header.Set("X-Auth-Token", strings.TrimPrefix(auth, "token:"))
	case auth == "":
		req.SetBasicAuth(vbmctest.Username, vbmctest.Password)
	default:
		req.SetBasicAuth(vbmctest.Username, auth)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &v); err != nil {
			t.Fatalf("%s %s: %d, body is not JSON: %v\n%s", method, url, resp.StatusCode, err, raw)
		}
	}
	return resp, v
}

// redfishError checks a Redfish error body and returns its MessageId.
func redfishError(t *testing.T, v map[string]any) string {
	t.Helper()
	e, ok := v["error"].(map[string]any)
	if !ok {
		t.Fatalf("no Redfish error object in %v", v)
	}
	if e["code"] != "Base.1.0.GeneralError" || e["message"] == "" {
		t.Errorf("error code %v, message %v", e["code"], e["message"])
	}
	info, _ := e["@Message.ExtendedInfo"].([]any)
	if len(info) == 0 {
		t.Fatalf("no @Message.ExtendedInfo in %v", e)
	}
	id, _ := info[0].(map[string]any)["MessageId"].(string)
	return id
}

// waitState waits for the machine to reach s.
func waitState(t *testing.T, m vbmc.Machine, s vbmc.PowerState, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		st, err := m.State(context.Background())
		if err == nil && st == s {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("machine is %s (%v), want %s after %v", st, err, s, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func splitHostPort(t *testing.T, addr string) (string, int) {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	return host, p
}

// basicTransport adds Basic credentials to every request.
type basicTransport struct{ user, pass string }

func (b basicTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.SetBasicAuth(b.user, b.pass)
	return http.DefaultTransport.RoundTrip(r)
}

func newBasicClient(user, pass string) *http.Client {
	return &http.Client{Transport: basicTransport{user, pass}}
}
