//go:build e2e

package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory/etcdtest"
)

const regionInventory = `apiVersion: kiln.dev/v1alpha1
kind: Rack
metadata: {name: r1}
---
apiVersion: kiln.dev/v1alpha1
kind: Subnet
metadata: {name: net1}
spec: {cidr: 192.0.2.0/24, rack: r1, gateway: 192.0.2.1}
---
apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: m1}
spec:
  interfaces: [{name: eno1, mac: "02:00:00:00:00:01", subnet: net1, ip: 192.0.2.11}]
  bmc: {driver: manual}
`

const regionMachine2 = `---
apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: m2}
spec:
  interfaces: [{name: eno1, mac: "02:00:00:00:00:02", subnet: net1, ip: 192.0.2.12}]
  bmc: {driver: manual}
`

// regionServer is a `kiln server` on an external etcd.
type regionServer struct {
	id, http, api string
	cmd           *exec.Cmd
	log           *lockedBuffer
}

// TestRegionServersFailover runs three `kiln server` processes on one
// etcd: one leads (applies the source, reconciles), kill -9 of it is taken
// over, and the new leader goes on where the old one stopped. With no rack
// agent, the machine's power task is never done, so it fails with that
// reason, which `kiln describe`, `kiln events` and `kiln retry` show.
func TestRegionServersFailover(t *testing.T) {
	_, ecfg := etcdtest.Start(t)
	endpoint := ecfg.Endpoints[0]
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "lab.yaml"), []byte(regionInventory), 0o644); err != nil {
		t.Fatal(err)
	}
	var servers []*regionServer
	for i := range 3 {
		s := &regionServer{id: fmt.Sprintf("region-%d", i), http: freeAddr(t), api: freeAddr(t), log: &lockedBuffer{}}
		s.cmd = exec.Command(kilnBin, "server", "--embedded-etcd=false", "--etcd-endpoints", endpoint,
			"--source", src, "--data-dir", t.TempDir(), "--listen", s.http, "--api", s.api, "--region-id", s.id,
			"--power-timeout", "1s", "--max-attempts", "1")
		s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
		if err := s.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.cmd.Process.Kill(); s.cmd.Wait() })
		servers = append(servers, s)
	}
	kiln := func(args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(kilnBin, args...)
		cmd.Env = append(os.Environ(), "KILN_ETCD_ENDPOINTS="+endpoint)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); ok {
			return out.String(), ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return out.String(), 0
	}
	waitFor := func(what string, within time.Duration, cond func() bool) time.Duration {
		t.Helper()
		return eventually(t, within, what, func() string {
			var logs strings.Builder
			for _, s := range servers {
				fmt.Fprintf(&logs, "--- %s\n%s", s.id, s.log)
			}
			return logs.String()
		}, cond)
	}
	leader := func(alive []*regionServer) *regionServer {
		var found *regionServer
		for _, s := range alive {
			if metric(s.http, "kiln_region_leader") == "1" {
				if found != nil {
					t.Fatalf("two region leaders: %s and %s", found.id, s.id)
				}
				found = s
			}
		}
		return found
	}

	var first *regionServer
	waitFor("one region leader", time.Minute, func() bool { first = leader(servers); return first != nil })
	waitFor("m1 to fail commissioning for want of a rack agent", time.Minute, func() bool {
		out, _ := kiln("describe", "machine", "m1")
		return strings.Contains(out, "failed-commissioning") && strings.Contains(out, "no rack agent of rack r1")
	})
	out, code := kiln("events", "m1")
	if code != 0 || !strings.Contains(out, "Commissioning") || !strings.Contains(out, "Failed") {
		t.Fatalf("kiln events m1: exit %d\n%s", code, out)
	}
	if m := metric(first.http, `kiln_machines{phase="failed-commissioning",rack="r1"}`); m != "1" {
		t.Fatalf("kiln_machines{phase=failed-commissioning} = %q on the leader", m)
	}
	// Every standby's region API answers reads from its own cache.
	tokOut, code := kiln("token", "create", "--name", "dash", "--role", "viewer")
	if code != 0 {
		t.Fatalf("kiln token create: %d %s", code, tokOut)
	}
	token := strings.TrimSpace(strings.SplitN(tokOut, "\n", 2)[0])
	for _, s := range servers {
		if s == first {
			continue
		}
		waitFor("standby "+s.id+"'s API to show m1 failed", time.Minute, func() bool {
			req, _ := http.NewRequest("GET", "http://"+s.api+"/api/v1/machines?phase=failed-commissioning", nil)
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode == 200 && strings.Contains(string(b), `"name":"m1"`)
		})
	}

	// kill -9 the leader: another takes over and carries on.
	if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	first.cmd.Wait()
	var alive []*regionServer
	for _, s := range servers {
		if s != first {
			alive = append(alive, s)
		}
	}
	var next *regionServer
	took := waitFor("a new region leader", time.Minute, func() bool { next = leader(alive); return next != nil })
	t.Logf("kill -9 of %s: %s leads %s later", first.id, next.id, took.Round(10*time.Millisecond))

	// The new leader retries on request ...
	if out, code := kiln("retry", "m1"); code != 0 {
		t.Fatalf("kiln retry m1: exit %d\n%s", code, out)
	}
	waitFor("the retry to be done by the new leader", time.Minute, func() bool {
		out, _ := kiln("events", "m1", "-o", "json")
		return strings.Contains(out, `"reason":"Retry"`)
	})
	// ... and applies the source: a new machine appears and is reconciled.
	f, err := os.OpenFile(filepath.Join(src, "lab.yaml"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(regionMachine2)
	f.Close()
	waitFor("m2 to be commissioned by the new leader", time.Minute, func() bool {
		out, _ := kiln("events", "m2")
		return strings.Contains(out, "Commissioning")
	})
	if out, code := kiln("retry", "nosuch"); code == 0 || !strings.Contains(out, "has no status") {
		t.Fatalf("kiln retry of an unknown machine: exit %d\n%s", code, out)
	}
}

// metric reads one sample's value from a server's /metrics ("" if absent).
func metric(addr, series string) string {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// TestRackRunsPowerTasks: the region asks, the rack leader powers the
// machine through its (virtual) BMC over real IPMI, and reports back; the
// machine agent never reports, so commissioning times out and the region
// has the machine powered off again.
func TestRackRunsPowerTasks(t *testing.T) {
	const password = "e2e-rack-bmc"
	ipmi, _ := startKilnVBMC(t, "m1", password)
	t.Setenv("KILN_E2E_BMC_PASSWORD", password)
	src := t.TempDir()
	inv := `apiVersion: kiln.dev/v1alpha1
kind: Rack
metadata: {name: r1}
---
apiVersion: kiln.dev/v1alpha1
kind: Subnet
metadata: {name: relayed}
spec: {cidr: 127.77.0.0/24, rack: r1, mode: relay, gateway: 127.77.0.1}
---
apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: m1}
spec:
  interfaces: [{name: eno1, mac: "52:54:00:77:00:09", subnet: relayed, ip: 127.77.0.9}]
  bmc: {driver: ipmi, address: "` + ipmi + `", username: admin, password: {fromEnv: KILN_E2E_BMC_PASSWORD}}
`
	if err := os.WriteFile(filepath.Join(src, "lab.yaml"), []byte(inv), 0o644); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, "--source", src, "--rack", "r1", "--interfaces", "lo", "--dhcp-port", freeUDPPort(t),
		"--proxy-port", "-1", "--timeout-commissioning", "20s", "--max-attempts", "1")

	s.waitFor("the rack to power m1 on for commissioning", func() bool {
		out, _, _ := s.kiln("describe", "machine", "m1")
		return strings.Contains(out, "netboot on rack r1: done")
	})
	if out, _, code := s.kiln("power", "status", "m1"); code != 0 || strings.TrimSpace(out) != "on" {
		t.Fatalf("m1 after the netboot task: %q (exit %d)", out, code)
	}
	s.waitFor("commissioning to time out", func() bool {
		out, _, _ := s.kiln("describe", "machine", "m1")
		return strings.Contains(out, "failed-commissioning") && strings.Contains(out, "never reported")
	})
	s.waitFor("the rack to power m1 off", func() bool {
		out, _, code := s.kiln("power", "status", "m1")
		return code == 0 && strings.TrimSpace(out) == "off"
	})
	out, _, _ := s.kiln("describe", "machine", "m1")
	if !strings.Contains(out, "off on rack r1: done") || !strings.Contains(out, "Power:") {
		t.Fatalf("describe after the power-off:\n%s", out)
	}
}
