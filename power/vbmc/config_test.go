package vbmc_test

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/power/vbmc"
)

func TestParseConfig(t *testing.T) {
	vms, err := vbmc.ParseConfig([]byte(`
vms:
  - name: vm-1
    ipmi: 127.0.0.1:6231
    redfish: 127.0.0.1:8001
    redfishTLS: 127.0.0.1:8441
    username: root
    passwordFile: pw
    sessionTimeout: 5m
    backend: qemu
    qemu:
      memory: 1G
      disks: [root.qcow2]
      nics: [{tap: tap1, mac: "52:54:00:42:00:01"}]
      gracefulTimeout: 20s
    faults: {latency: 150ms, failNext: 2, protocol: redfish}
  - name: vm-2
    ipmi: 127.0.0.1:6232
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(vms) != 2 {
		t.Fatalf("%d VMs", len(vms))
	}
	v := vms[0]
	if v.Name != "vm-1" || v.IPMI != "127.0.0.1:6231" || v.RedfishTLS != "127.0.0.1:8441" || v.Username != "root" ||
		v.SessionTimeout != 5*time.Minute || v.Backend != "qemu" || v.QEMU.Memory != "1G" || v.QEMU.GracefulTimeout != 20*time.Second ||
		len(v.QEMU.NICs) != 1 || v.QEMU.NICs[0].Tap != "tap1" {
		t.Errorf("vm-1: %+v", v)
	}
	if v.Faults != (vbmc.Faults{Latency: 150 * time.Millisecond, FailNext: 2, Protocol: "redfish"}) {
		t.Errorf("faults: %+v", v.Faults)
	}

	// JSON is YAML too.
	if vms, err := vbmc.ParseConfig([]byte(`{"vms": [{"name": "j", "ipmi": ":623", "faults": {"hang": true}}]}`)); err != nil || !vms[0].Faults.Hang {
		t.Errorf("JSON: %+v %v", vms, err)
	}

	for body, want := range map[string]string{
		"vms: [{name: a, ipmi: ':1', pasword: x}]":                                        "pasword",
		"vms: [{name: a}, {name: a}]":                                                     "used twice",
		"vms: [{name: a, backend: libvirt}]":                                              "backend",
		"vms: [{name: a, faults: {errorRate: 3}}]":                                        "errorRate",
		"vms: [{name: a, backend: qemu, qemu: {disableNICROM: true, nics: [{tap: t1}]}}]": "vm a: qemu: disableNICROM needs UEFI firmware",
		"vms: [{name: a, backend: qemu, qemu: {firmwareType: efi}}]":                      `vm a: qemu: firmwareType "efi"`,
		"vms: [{ipmi: ':1'}]":                                                             "no name",
		"vms: []":                                                                         "no vms",
		"":                                                                                "empty",
		"vms: [{name: a, sessionTimeout: soon}]":                                          "soon",
		"vms: [{name: a, qemu: {memory: 1G, cpu: 2}}]":                                    "cpu",
		"vms: [{name: a, faults: {protocol: telnet}}]":                                    "protocol",
		"vms: [{name: a, faults: {latency: -1s}}]":                                        "negative",
		"vms: [{name: a, qemu: {gracefulTimeout: 10x}}]":                                  "10x",
		"vms: [{name: a, faults: {ipmiCompletionCode: 300}}]":                             "300",
	} {
		if _, err := vbmc.ParseConfig([]byte(body)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error about %q", body, err, want)
		}
	}
}

func TestLoadConfigAndRun(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "pw"), []byte("s3cret\n"), 0o600)
	cfg := filepath.Join(dir, "vbmc.yaml")
	os.WriteFile(cfg, []byte(`
vms:
  - name: vm-1
    ipmi: 127.0.0.1:0
    redfish: 127.0.0.1:0
    redfishTLS: 127.0.0.1:0
    certOut: vm-1.pem
    passwordFile: pw
`), 0o644)
	vms, err := vbmc.LoadConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if vms[0].PasswordFile != filepath.Join(dir, "pw") {
		t.Errorf("password file %s is not relative to the config", vms[0].PasswordFile)
	}
	vm, err := vbmc.NewVM(vms[0], nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- vm.Run(ctx) }()

	b := vm.BMC()
	if pem, err := os.ReadFile(filepath.Join(dir, "vm-1.pem")); err != nil || string(pem) != string(b.CertPEM()) {
		t.Errorf("certificate written: %v", err)
	}
	resp, _ := requestURL(t, http.DefaultClient, b.RedfishURL()+"/redfish/v1/Systems", "GET", "none", "")
	if resp.StatusCode != 401 {
		t.Errorf("without credentials: %d", resp.StatusCode)
	}
	req := b.RedfishURL() + "/redfish/v1/Systems/vm-1/Actions/ComputerSystem.Reset"
	client := newBasicClient("admin", "s3cret")
	if resp, _ := requestURL(t, client, req, "POST", "none", `{"ResetType":"On"}`); resp.StatusCode != 204 {
		t.Fatalf("reset with the password from the file: %d", resp.StatusCode)
	}
	waitState(t, vm.Machine(), vbmc.On, time.Second)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Run closed the machine.
	if _, err := vm.Machine().State(context.Background()); err != vbmc.ErrClosed {
		t.Errorf("machine after Run: %v", err)
	}
}

func TestNewErrors(t *testing.T) {
	m := vbmc.NewMemory()
	base := vbmc.Config{Name: "vm", Username: "admin", Password: "pw", IPMIAddr: "127.0.0.1:0"}
	for _, tc := range []struct {
		edit func(*vbmc.Config)
		want string
	}{
		{func(c *vbmc.Config) { c.Name = "a/b" }, "name"},
		{func(c *vbmc.Config) { c.Password = "" }, "password"},
		{func(c *vbmc.Config) { c.Username = "a-very-long-user-name" }, "16 bytes"},
		{func(c *vbmc.Config) { c.Password = strings.Repeat("p", 21) }, "20 bytes"},
		{func(c *vbmc.Config) { c.IPMIAddr = "" }, "no endpoint"},
		{func(c *vbmc.Config) { c.TLSCertFile = "x.pem" }, "both"},
		{func(c *vbmc.Config) { c.Faults.ErrorRate = -1 }, "errorRate"},
		{func(c *vbmc.Config) { c.IPMIAddr = "127.0.0.1:99999" }, "IPMI"},
	} {
		c := base
		tc.edit(&c)
		if b, err := vbmc.New(c, m); err == nil || !strings.Contains(err.Error(), tc.want) {
			if b != nil {
				b.Close()
			}
			t.Errorf("%+v: %v, want an error about %q", c, err, tc.want)
		}
	}
	// A busy port is an error, and the other listeners are released.
	b, err := vbmc.New(vbmc.Config{Name: "vm", Username: "admin", Password: "pw", RedfishAddr: "127.0.0.1:0"}, m)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	busy := strings.TrimPrefix(b.RedfishURL(), "http://")
	if _, err := vbmc.New(vbmc.Config{Name: "vm", Username: "admin", Password: "pw", IPMIAddr: "127.0.0.1:0", RedfishAddr: busy}, m); err == nil {
		t.Error("a busy port was accepted")
	}
}

func TestMemory(t *testing.T) {
	ctx := context.Background()
	m := vbmc.NewMemory()
	if err := m.Reset(ctx, vbmc.Boot{}); err != vbmc.ErrPoweredOff {
		t.Errorf("reset while off: %v", err)
	}
	m.PowerOn(ctx, vbmc.Boot{Enabled: vbmc.BootOnce, Target: vbmc.TargetPxe})
	m.PowerOn(ctx, vbmc.Boot{}) // already on: no second start
	if s := m.Stats(); s.Starts != 1 || !s.LastBoot.Network() {
		t.Errorf("%+v", s)
	}
	m.SetGraceful(0, true)
	m.PowerOff(ctx, false)
	if st, _ := m.State(ctx); st != vbmc.On {
		t.Error("an ignored graceful shutdown turned the machine off")
	}
	m.SetGraceful(20*time.Millisecond, false)
	m.PowerOff(ctx, false)
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := m.WaitState(wctx, vbmc.Off); err != nil {
		t.Fatal(err)
	}
	m.SetState(vbmc.On) // the power button
	if st, _ := m.State(ctx); st != vbmc.On {
		t.Error("SetState")
	}
	m.Close()
	if _, err := m.State(ctx); err != vbmc.ErrClosed {
		t.Errorf("after Close: %v", err)
	}
}
