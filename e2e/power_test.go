//go:build e2e

package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startKilnVBMC runs `kiln vbmc` (state-only machine) and returns its IPMI and
// Redfish addresses.
func startKilnVBMC(t *testing.T, name, password string) (ipmi, redfish string) {
	t.Helper()
	ipmi, redfish = freeUDPAddr(t), freeAddr(t)
	pw := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(pw, []byte(password+"\n"), 0o600)
	cmd := exec.Command(kilnBin, "vbmc", "--name", name, "--ipmi", ipmi, "--redfish", redfish,
		"--username", "admin", "--password-file", pw, "--backend", "memory")
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Errorf("kiln vbmc did not stop on SIGTERM\n%s", log.String())
		}
	})
	return ipmi, redfish
}

func freeUDPAddr(t *testing.T) string {
	t.Helper()
	// A TCP port that is free is almost always free for UDP too; the vBMC
	// reports a clear error if not.
	return freeAddr(t)
}

// The operator's path: machines in the inventory point at BMCs; `kiln
// power` drives them by name through IPMI and Redfish.
func TestPowerThroughVirtualBMCs(t *testing.T) {
	const password = "lab-bmc-secret"
	ipmi1, _ := startKilnVBMC(t, "vm-1", password)
	_, redfish3 := startKilnVBMC(t, "vm-3", password)

	dir := filepath.Join(t.TempDir(), "lab")
	copyTree(t, "../examples/lab", dir)
	editorWrite(t, filepath.Join(dir, "machines.yaml"), func(s string) string {
		s = strings.Replace(s, "address: 10.42.0.101:623", "address: "+ipmi1, 1)
		s = strings.Replace(s, "address: https://10.42.0.103:8443", "address: http://"+redfish3, 1)
		s = strings.Replace(s, "password: {fromFile: /etc/kiln/bmc/vm-3.password}", "password: {fromEnv: KILN_LAB_BMC_PASSWORD}", 1)
		s = strings.Replace(s, "      caFile: /etc/kiln/bmc/lab-ca.pem", "      systemID: vm-3", 1)
		// vm-2 has no BMC Kiln drives here (and its lab address is not
		// ours to send to): a person powers it.
		return strings.Replace(s, "  bmc:\n    address: 10.42.0.102:623", "  bmc:\n    driver: manual", 1)
	})
	s := startServer(t, "--source", dir)
	t.Setenv("KILN_LAB_BMC_PASSWORD", password)

	for _, m := range []string{"vm-1", "vm-3"} {
		// Each vBMC starts in its own time: wait until it answers.
		s.waitFor(m+"'s BMC to answer", func() bool {
			out, _, code := s.kiln("power", "status", m, "--op-timeout", "2s")
			return code == 0 && strings.TrimSpace(out) == "off"
		})
		for _, step := range [][]string{{"boot-network", ""}, {"on", ""}, {"status", "on"}, {"off", ""}, {"status", "off"}} {
			out, errOut, code := s.kiln("power", step[0], m)
			if code != 0 || strings.TrimSpace(out) != step[1] {
				t.Fatalf("kiln power %s %s: exit %d, %q %s", step[0], m, code, out, errOut)
			}
		}
	}

	// Wrong password: a clear error naming machine and BMC, no password.
	t.Setenv("KILN_LAB_BMC_PASSWORD", "not-it")
	_, errOut, code := s.kiln("power", "on", "vm-1")
	if code == 0 || !strings.Contains(errOut, "authentication failed") || !strings.Contains(errOut, "machine vm-1") || strings.Contains(errOut, "not-it") {
		t.Fatalf("wrong password: exit %d: %s", code, errOut)
	}
	// A machine without a BMC Kiln drives: says what a person must do.
	_, errOut, code = s.kiln("power", "on", "vm-2")
	if code == 0 || !strings.Contains(errOut, "power machine vm-2 on by hand") {
		t.Fatalf("vm-2: exit %d: %s", code, errOut)
	}
}
