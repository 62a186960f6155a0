package vbmc_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/bougou/go-ipmi/pkg/command/chassis"
	"github.com/kilnhq/kiln/power/vbmc"
	"github.com/kilnhq/kiln/power/vbmc/vbmctest"
)

func TestRedfishFaults(t *testing.T) {
	b := vbmctest.Start(t, nil)
	status := func() int {
		resp, _ := request(t, b, "GET", "/redfish/v1/Systems/vm-1", "", "")
		return resp.StatusCode
	}

	// Fail the next two requests.
	if resp, v := request(t, b, "PUT", "/vbmc/faults", "", `{"failNext":2}`); resp.StatusCode != 200 || v["failNext"] != 2.0 {
		t.Fatalf("PUT /vbmc/faults: %d %v", resp.StatusCode, v)
	}
	for i, want := range []int{500, 500, 200, 200} {
		if got := status(); got != want {
			t.Errorf("request %d: %d, want %d", i, got, want)
		}
	}
	if resp, _ := request(t, b, "PUT", "/vbmc/faults", "", `{"errorRate":1}`); resp.StatusCode != 200 {
		t.Fatal(resp.StatusCode)
	}
	resp, v := request(t, b, "GET", "/redfish/v1/", "none", "")
	if resp.StatusCode != 500 || redfishError(t, v) != "Base.1.0.InternalError" {
		t.Errorf("with errorRate 1: %d %v", resp.StatusCode, v)
	}
	// The admin API is exempt, so faults can always be cleared.
	if resp, _ := request(t, b, "DELETE", "/vbmc/faults", "", ""); resp.StatusCode != 200 {
		t.Fatalf("DELETE /vbmc/faults: %d", resp.StatusCode)
	}
	if got := status(); got != 200 {
		t.Errorf("after clearing: %d", got)
	}

	// Faults limited to IPMI leave Redfish alone.
	request(t, b, "PUT", "/vbmc/faults", "", `{"errorRate":1,"protocol":"ipmi"}`)
	if got := status(); got != 200 {
		t.Errorf("IPMI-only faults hit Redfish: %d", got)
	}

	// Latency.
	if err := b.SetFaults(vbmc.Faults{Latency: 300 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if got := status(); got != 200 || time.Since(start) < 300*time.Millisecond {
		t.Errorf("with 300ms latency: %d after %v", got, time.Since(start))
	}

	// A hang answers nothing until the faults change.
	b.SetFaults(vbmc.Faults{Hang: true})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	req, _ := http.NewRequestWithContext(ctx, "GET", b.RedfishURL()+"/redfish/v1/", nil)
	if _, err := http.DefaultClient.Do(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a hanging BMC answered: %v", err)
	}
	cancel()
	answered := make(chan int)
	go func() {
		resp, err := http.Get(b.RedfishURL() + "/redfish/v1/")
		if err != nil {
			answered <- 0
			return
		}
		resp.Body.Close()
		answered <- resp.StatusCode
	}()
	if resp, _ := request(t, b, "DELETE", "/vbmc/faults", "", ""); resp.StatusCode != 200 {
		t.Fatal(resp.StatusCode)
	}
	if code := <-answered; code != 200 {
		t.Errorf("a request held by the hang: %d after clearing", code)
	}

	// Bad fault requests.
	for _, body := range []string{`{"errorRate":2}`, `{"latency":"soon"}`, `{"latency":5}`, `{"bogus":true}`, `{"protocol":"snmp"}`} {
		if resp, _ := request(t, b, "PUT", "/vbmc/faults", "", body); resp.StatusCode != 400 {
			t.Errorf("PUT /vbmc/faults %s: %d, want 400", body, resp.StatusCode)
		}
	}
	if resp, _ := request(t, b, "GET", "/vbmc/faults", "none", ""); resp.StatusCode != 401 {
		t.Errorf("admin API without credentials: %d", resp.StatusCode)
	}
}

func TestDropSessions(t *testing.T) {
	b := vbmctest.Start(t, nil)
	resp, _ := request(t, b, "POST", "/redfish/v1/SessionService/Sessions", "none", `{"UserName":"admin","Password":"`+vbmctest.Password+`"}`)
	token := resp.Header.Get("X-Auth-Token")
	c := goIPMI(t, b, time.Second)
	ctx := context.Background()
	if _, err := c.GetChassisStatus(ctx); err != nil {
		t.Fatal(err)
	}

	if resp, v := request(t, b, "POST", "/vbmc/faults", "", `{"dropSessions":true}`); resp.StatusCode != 200 {
		t.Fatalf("dropSessions: %d %v", resp.StatusCode, v)
	}
	if resp, _ := request(t, b, "GET", "/redfish/v1/Systems", "token:"+token, ""); resp.StatusCode != 401 {
		t.Errorf("a dropped Redfish session: %d, want 401", resp.StatusCode)
	}
	if _, err := c.GetChassisStatus(ctx); err == nil {
		t.Error("a dropped IPMI session still answers")
	}
}

func TestIPMIFaults(t *testing.T) {
	needTool(t, "ipmitool")
	m := vbmc.NewMemory()
	b := vbmctest.Start(t, m, func(c *vbmc.Config) { c.Faults = vbmc.Faults{FailNext: 1, Protocol: "ipmi"} })

	// The first chassis command fails with the completion code; the next works.
	out, err := ipmitool(t, b, "lanplus", "", "chassis", "power", "on")
	if err == nil || !strings.Contains(out, "Unspecified error") {
		t.Errorf("power on with failNext 1: %v %q", err, out)
	}
	if st, _ := m.State(context.Background()); st != vbmc.Off {
		t.Error("a failed command changed the machine")
	}
	mustIPMI(t, b, "chassis", "power", "on")

	b.SetFaults(vbmc.Faults{ErrorRate: 1, IPMICompletionCode: 0xC0})
	if out, err := ipmitool(t, b, "lanplus", "", "chassis", "power", "status"); err == nil || !strings.Contains(out, "Node busy") {
		t.Errorf("status with error rate 1 and C0h: %v %q", err, out)
	}

	// A hang: nothing is answered, not even the session set-up.
	b.SetFaults(vbmc.Faults{Hang: true})
	if out, err := ipmitool(t, b, "lanplus", "", "-N", "1", "-R", "1", "chassis", "power", "status"); err == nil {
		t.Errorf("a hanging BMC answered: %q", out)
	}
	b.SetFaults(vbmc.Faults{})
	if out := mustIPMI(t, b, "chassis", "power", "status"); !strings.Contains(out, "is on") {
		t.Errorf("after clearing: %q", out)
	}

	// Latency, through go-ipmi.
	c := goIPMI(t, b, 5*time.Second)
	b.SetFaults(vbmc.Faults{Latency: 300 * time.Millisecond})
	start := time.Now()
	if _, err := c.ChassisControl(context.Background(), chassis.ChassisControlPowerDown); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("with 300ms latency the answer took %v", d)
	}
	waitState(t, m, vbmc.Off, time.Second)
}
