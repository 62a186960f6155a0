//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The virtual BMC end to end: `kiln vbmc` driving real QEMU VMs (TCG, 64M,
// no disk) through real IPMI and Redfish clients. TCG is slow on a shared
// machine, so deadlines are generous, and the VMs run one at a time.

const vmBoot = 3 * time.Minute // how long a VM may take to show its firmware

func needBinary(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Skipf("%s is not installed (CI installs it: apt-get install ipmitool qemu-system-x86 ipxe-qemu); skipping", n)
		}
	}
}

func freeUDPPort(t *testing.T) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, port, _ := net.SplitHostPort(c.LocalAddr().String())
	return port
}

// lockedBuffer collects a process's output while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// vbmcProc is a running `kiln vbmc`.
type vbmcProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	log    *lockedBuffer
	exited chan error
	done   bool
}

const vbmcPassword = "e2e-vbmc-pw"

func startVBMC(t *testing.T, args ...string) *vbmcProc {
	t.Helper()
	pw := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pw, []byte(vbmcPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &vbmcProc{t: t, log: &lockedBuffer{}, exited: make(chan error, 1)}
	if !strings.Contains(strings.Join(args, " "), "--config") {
		args = append(args, "--password-file", pw)
	}
	p.cmd = exec.Command(kilnBin, append([]string{"vbmc", "--log-level", "debug"}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if !p.done {
			p.stop()
		}
	})
	p.waitLog("the virtual BMC to start", "kiln vbmc running", 30*time.Second)
	return p
}

// stop sends SIGTERM and expects a clean exit.
func (p *vbmcProc) stop() {
	p.t.Helper()
	p.done = true
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		if err != nil {
			p.t.Errorf("kiln vbmc exited with %v after SIGTERM\n%s", err, p.log)
		}
	case <-time.After(60 * time.Second):
		p.cmd.Process.Kill()
		p.t.Errorf("kiln vbmc did not stop within 60s of SIGTERM\n%s", p.log)
	}
}

// waitLog waits until the process has logged want, returning the log.
func (p *vbmcProc) waitLog(what, want string, within time.Duration) string {
	p.t.Helper()
	var l string
	eventually(p.t, within, what, p.log.String, func() bool {
		if l = p.log.String(); strings.Contains(l, want) {
			return true
		}
		select {
		case err := <-p.exited:
			p.done = true
			p.t.Fatalf("kiln vbmc exited (%v) while waiting for %s", err, what)
		default:
		}
		return false
	})
	return l
}

var qemuPID = regexp.MustCompile(`msg="QEMU started" vm=\S+ pid=(\d+)`)

// lastQEMUPID is the process id of the QEMU the log says started last.
func (p *vbmcProc) lastQEMUPID() int {
	p.t.Helper()
	m := qemuPID.FindAllStringSubmatch(p.log.String(), -1)
	if len(m) == 0 {
		p.t.Fatalf("no QEMU started\n%s", p.log)
	}
	pid, _ := strconv.Atoi(m[len(m)-1][1])
	return pid
}

// waitSerial waits until the VM's console log holds want.
func waitSerial(t *testing.T, stateDir, want string) {
	t.Helper()
	path := filepath.Join(stateDir, "serial.log")
	var console string
	eventually(t, vmBoot, fmt.Sprintf("%q on the VM's console", want), func() string { return console }, func() bool {
		b, _ := os.ReadFile(path)
		console = string(b)
		return strings.Contains(console, want)
	})
}

// waitGone waits until process pid has exited and been reaped.
func waitGone(t *testing.T, pid int, within time.Duration) {
	t.Helper()
	proc := "/proc/" + strconv.Itoa(pid)
	eventually(t, within, fmt.Sprintf("QEMU process %d to be gone", pid), func() string {
		stat, _ := os.ReadFile(proc + "/stat")
		return string(stat)
	}, func() bool {
		_, err := os.Stat(proc)
		return err != nil
	})
}

func ipmitoolE2E(t *testing.T, port string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a := append([]string{"-I", "lanplus", "-H", "127.0.0.1", "-p", port, "-U", "admin", "-P", vbmcPassword}, args...)
	out, err := exec.CommandContext(ctx, "ipmitool", a...).CombinedOutput()
	if err != nil {
		t.Fatalf("ipmitool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestVBMCQEMUOverIPMI powers a QEMU VM on and off with ipmitool.
func TestVBMCQEMUOverIPMI(t *testing.T) {
	needBinary(t, "ipmitool", "qemu-system-x86_64")
	port := freeUDPPort(t)
	state := t.TempDir()
	p := startVBMC(t, "--name", "e2e-ipmi", "--backend", "qemu", "--qemu-memory", "64M", "--qemu-state-dir", state,
		"--qemu-graceful-timeout", "3s", "--ipmi", "127.0.0.1:"+port, "--redfish", "")

	if out := ipmitoolE2E(t, port, "chassis", "power", "status"); !strings.Contains(out, "is off") {
		t.Fatalf("a new VM: %s", out)
	}
	ipmitoolE2E(t, port, "chassis", "bootdev", "pxe")
	ipmitoolE2E(t, port, "chassis", "power", "on")
	waitSerial(t, state, "SeaBIOS")
	waitSerial(t, state, "iPXE") // the one-time network boot
	pid := p.lastQEMUPID()
	if out := ipmitoolE2E(t, port, "chassis", "power", "status"); !strings.Contains(out, "is on") {
		t.Fatalf("after power on: %s", out)
	}
	if out := ipmitoolE2E(t, port, "chassis", "bootparam", "get", "5"); strings.Contains(out, "Boot Flag Valid") {
		t.Errorf("the one-time override is still set after the boot:\n%s", out)
	}

	// Soft: the firmware ignores ACPI, so the VM is stopped after 3s.
	ipmitoolE2E(t, port, "chassis", "power", "soft")
	waitGone(t, pid, time.Minute)
	if out := ipmitoolE2E(t, port, "chassis", "power", "status"); !strings.Contains(out, "is off") {
		t.Errorf("after soft off: %s", out)
	}

	ipmitoolE2E(t, port, "chassis", "power", "on")
	waitSerial(t, state, "SeaBIOS")
	pid = p.lastQEMUPID()
	ipmitoolE2E(t, port, "chassis", "power", "off")
	waitGone(t, pid, 30*time.Second)
	if out := ipmitoolE2E(t, port, "chassis", "power", "status"); !strings.Contains(out, "is off") {
		t.Errorf("after power off: %s", out)
	}

	// SIGTERM stops the VMs kiln started.
	ipmitoolE2E(t, port, "chassis", "power", "on")
	pid = p.lastQEMUPID()
	p.stop()
	waitGone(t, pid, 30*time.Second)
}

// redfishClient talks to a vBMC's HTTPS Redfish endpoint, trusting the
// certificate it wrote.
type redfishClient struct {
	t     *testing.T
	http  *http.Client
	base  string
	token string
}

func (c *redfishClient) do(method, path, body string) (int, http.Header, map[string]any) {
	c.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if c.token != "" {
		req.Header.Set("X-Auth-Token", c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	var v map[string]any
	raw, _ := io.ReadAll(resp.Body)
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &v); err != nil {
			c.t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, raw)
		}
	}
	return resp.StatusCode, resp.Header, v
}

func (c *redfishClient) must(method, path, body string, want int) map[string]any {
	c.t.Helper()
	code, _, v := c.do(method, path, body)
	if code != want {
		c.t.Fatalf("%s %s %s: %d, want %d: %v", method, path, body, code, want, v)
	}
	return v
}

// TestVBMCQEMUOverRedfish powers a QEMU VM on and off over Redfish (HTTPS,
// a session).
func TestVBMCQEMUOverRedfish(t *testing.T) {
	needBinary(t, "qemu-system-x86_64")
	addr := freeAddr(t)
	state := t.TempDir()
	cert := filepath.Join(t.TempDir(), "cert.pem")
	p := startVBMC(t, "--name", "e2e-redfish", "--backend", "qemu", "--qemu-memory", "64M", "--qemu-state-dir", state,
		"--qemu-graceful-timeout", "3s", "--ipmi", "", "--redfish", "", "--redfish-tls", addr, "--cert-out", cert)

	pem, err := os.ReadFile(cert)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("no certificate in %s", cert)
	}
	c := &redfishClient{t: t, base: "https://" + addr,
		http: &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}}

	c.must("GET", "/redfish/v1/Systems", "", 401)
	code, hdr, _ := c.do("POST", "/redfish/v1/SessionService/Sessions", fmt.Sprintf(`{"UserName":"admin","Password":%q}`, vbmcPassword))
	if code != 201 || hdr.Get("X-Auth-Token") == "" {
		t.Fatalf("login: %d", code)
	}
	c.token = hdr.Get("X-Auth-Token")
	session := hdr.Get("Location")

	const sys = "/redfish/v1/Systems/e2e-redfish"
	if v := c.must("GET", sys, "", 200); v["PowerState"] != "Off" {
		t.Fatalf("a new VM: %v", v["PowerState"])
	}
	c.must("PATCH", sys, `{"Boot":{"BootSourceOverrideEnabled":"Once","BootSourceOverrideTarget":"Pxe"}}`, 200)
	c.must("POST", sys+"/Actions/ComputerSystem.Reset", `{"ResetType":"On"}`, 204)
	waitSerial(t, state, "SeaBIOS")
	waitSerial(t, state, "iPXE")
	pid := p.lastQEMUPID()
	v := c.must("GET", sys, "", 200)
	if v["PowerState"] != "On" || v["Boot"].(map[string]any)["BootSourceOverrideEnabled"] != "Disabled" {
		t.Errorf("after power on: %v %v", v["PowerState"], v["Boot"])
	}

	// A fault, through the admin API on the same listener.
	c.must("PUT", "/vbmc/faults", `{"failNext":1}`, 200)
	c.must("GET", sys, "", 500)
	c.must("GET", sys, "", 200)

	c.must("POST", sys+"/Actions/ComputerSystem.Reset", `{"ResetType":"ForceOff"}`, 204)
	waitGone(t, pid, 30*time.Second)
	if v := c.must("GET", sys, "", 200); v["PowerState"] != "Off" {
		t.Errorf("after ForceOff: %v", v["PowerState"])
	}

	c.must("POST", sys+"/Actions/ComputerSystem.Reset", `{"ResetType":"On"}`, 204)
	waitSerial(t, state, "SeaBIOS")
	pid = p.lastQEMUPID()
	c.must("POST", sys+"/Actions/ComputerSystem.Reset", `{"ResetType":"GracefulShutdown"}`, 204)
	waitGone(t, pid, time.Minute) // forced after 3s: the firmware ignores ACPI
	if v := c.must("GET", sys, "", 200); v["PowerState"] != "Off" {
		t.Errorf("after GracefulShutdown: %v", v["PowerState"])
	}

	c.must("DELETE", session, "", 204)
	c.must("GET", sys, "", 401)
	p.stop()
}

// TestVBMCConfigFile runs two memory-backed BMCs from a configuration file.
func TestVBMCConfigFile(t *testing.T) {
	needBinary(t, "ipmitool")
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "pw"), []byte(vbmcPassword), 0o600)
	p1, p2 := freeUDPPort(t), freeUDPPort(t)
	r1 := freeAddr(t)
	cfg := filepath.Join(dir, "vbmc.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`vms:
  - {name: a, ipmi: "127.0.0.1:%s", redfish: %q, passwordFile: pw}
  - {name: b, ipmi: "127.0.0.1:%s", passwordFile: pw}
`, p1, r1, p2)), 0o644)
	p := startVBMC(t, "--config", cfg)
	ipmitoolE2E(t, p1, "chassis", "power", "on")
	if out := ipmitoolE2E(t, p1, "chassis", "power", "status"); !strings.Contains(out, "is on") {
		t.Errorf("a: %s", out)
	}
	if out := ipmitoolE2E(t, p2, "chassis", "power", "status"); !strings.Contains(out, "is off") {
		t.Errorf("b: %s", out)
	}
	c := &redfishClient{t: t, base: "http://" + r1, http: http.DefaultClient}
	c.must("GET", "/redfish/v1/", "", 200)
	p.stop()

	// Flags and a config file together are a usage error.
	out, err := exec.Command(kilnBin, "vbmc", "--config", cfg, "--ipmi", ":1").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Errorf("--config with --ipmi: %v %s", err, out)
	}
}
