//go:build e2e

package e2e

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/e2e/netlab"
)

// labRackDoc is rack r1 and its subnet lab-net, as netlab.Rack wires them
// (10.42.0.0/24, dynamic range .200-.250): the start of the inventories
// of the boot and agent tests.
const labRackDoc = `apiVersion: kiln.dev/v1alpha1
kind: Rack
metadata: {name: r1}
---
apiVersion: kiln.dev/v1alpha1
kind: Subnet
metadata: {name: lab-net}
spec:
  cidr: 10.42.0.0/24
  rack: r1
  gateway: 10.42.0.1
  dynamicRange: {start: 10.42.0.200, end: 10.42.0.250}
---
`

// Real network boots under QEMU: the firmware and iPXE talk to Kiln's DHCP,
// TFTP and HTTP boot servers, and a Debian kernel boots a busybox
// initramfs that Kiln fetched, verified and serves from the rack's cache.
// (The real machine agent comes with its own issue.)

// testKernel finds a Linux kernel: $KILN_TEST_KERNEL, the one .ci/run
// unpacks from Debian's linux-image-amd64, or /boot.
func testKernel(t *testing.T) string {
	t.Helper()
	cands := []string{os.Getenv("KILN_TEST_KERNEL"), "/var/cache/kiln-e2e/vmlinuz"}
	if m, _ := filepath.Glob("/boot/vmlinuz-*"); len(m) > 0 {
		cands = append(cands, m...)
	}
	for _, c := range cands {
		if c != "" {
			if fi, err := os.Stat(c); err == nil && fi.Size() > 1<<20 {
				return c
			}
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no kernel for the boot tests: .ci/run unpacks linux-image-amd64 into /var/cache/kiln-e2e")
	}
	t.Skip("no Linux kernel: set KILN_TEST_KERNEL or run .ci/run once")
	return ""
}

// initramfs builds a gzipped newc cpio with busybox and an /init that
// prints a marker and the kernel command line, then powers off.
func initramfs(t *testing.T) []byte {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skipf("busybox-static: %v", err)
	}
	init := "#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\n" +
		"/bin/busybox echo kiln-ephemeral-booted\n/bin/busybox echo \"cmdline: $(/bin/busybox cat /proc/cmdline) :end\"\n" +
		"/bin/busybox poweroff -f\n"
	var raw bytes.Buffer
	ino := 1
	add := func(name string, mode uint32, rdevMajor, rdevMinor int, data []byte) {
		fmt.Fprintf(&raw, "070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
			ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
		ino++
		raw.WriteString(name)
		raw.WriteByte(0)
		for raw.Len()%4 != 0 {
			raw.WriteByte(0)
		}
		raw.Write(data)
		for raw.Len()%4 != 0 {
			raw.WriteByte(0)
		}
	}
	add("dev", 0o040755, 0, 0, nil)
	add("dev/console", 0o020600, 5, 1, nil)
	add("proc", 0o040755, 0, 0, nil)
	add("bin", 0o040755, 0, 0, nil)
	add("bin/busybox", 0o100755, 0, 0, bb)
	add("init", 0o100755, 0, 0, []byte(init))
	add("TRAILER!!!", 0, 0, 0, nil)
	var gz bytes.Buffer
	w := gzip.NewWriter(&gz)
	w.Write(raw.Bytes())
	w.Close()
	return gz.Bytes()
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func TestBootEphemeralOverTheNetwork(t *testing.T) {
	netlab.Require(t)
	netlab.RequireBinary(t, "qemu-system-x86_64")
	if _, err := os.Stat("/usr/lib/ipxe/ipxe.efi"); err != nil {
		t.Fatalf("the ipxe package is needed for UEFI PXE (TFTP ipxe.efi): %v", err)
	}
	kernel, err := os.ReadFile(testKernel(t))
	if err != nil {
		t.Fatal(err)
	}
	initrd := initramfs(t)
	files := t.TempDir()
	os.WriteFile(filepath.Join(files, "vmlinuz"), kernel, 0o644)
	os.WriteFile(filepath.Join(files, "initrd.gz"), initrd, 0o644)

	r := netlab.Rack(t)
	src := t.TempDir()
	inv := fmt.Sprintf(labRackDoc+`apiVersion: kiln.dev/v1alpha1
kind: Image
metadata: {name: ephemeral}
spec:
  purpose: ephemeral
  kernel: {url: "file://%s/vmlinuz", sha256: "%s"}
  initrd: {url: "file://%s/initrd.gz", sha256: "%s"}
  cmdline: console=ttyS0 panic=-1
`, files, sha(kernel), files, sha(initrd))
	os.WriteFile(filepath.Join(src, "fleet.yaml"), []byte(inv), 0o644)
	k := &kilnRack{t: t, r: r, src: src, data: t.TempDir()}
	k.startServer()
	agent := k.startAgent("agent-0", nil, "--http", "10.42.0.1:8080", "--tftp", "10.42.0.1:69",
		"--cache-dir", t.TempDir())
	agent.Expect(`serving HTTP boot`, 60*time.Second)
	// UEFI HTTP boot firmware fetches iPXE itself over HTTP.
	if out, err := r.Srv.Exec("curl", "-sf", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", "http://10.42.0.1:8080/ipxe/ipxe.efi"); err != nil || !strings.HasPrefix(out, "200 ") {
		t.Errorf("ipxe.efi over HTTP: %v %q", err, out)
	}

	for _, c := range []struct {
		name string
		uefi bool
		mac  string
	}{
		{"bios-ipxe-rom", false, "52:54:00:00:00:31"},
		{"uefi-firmware-pxe", true, "52:54:00:00:00:32"},
	} {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			vm := netlab.QEMU(r.Switch, netlab.QEMUOpts{Tap: r.Tap("tap-" + c.mac[len(c.mac)-2:]), MAC: c.mac, UEFI: c.uefi, Memory: 512})
			line := vm.Expect(`kiln-ephemeral-booted`, 300*time.Second)
			t.Logf("%s: power-on to a running initramfs in %s (%s)", c.name, time.Since(start).Round(time.Second), strings.TrimSpace(line))
			cmdline := vm.Expect(`cmdline: .* :end`, 60*time.Second)
			for _, want := range []string{"kiln.purpose=discover", "kiln.token=", "kiln.url=http://10.42.0.1:8080", "console=ttyS0"} {
				if !strings.Contains(cmdline, want) {
					t.Errorf("kernel command line lacks %q: %s", want, cmdline)
				}
			}
			if err := vm.Wait(60 * time.Second); err != nil {
				t.Errorf("the VM did not power off: %v", err)
			}
			if c.uefi && !strings.Contains(agent.Log(), "ipxe.efi") {
				t.Logf("note: no TFTP log line for ipxe.efi in the agent's log")
			}
		})
	}
	out := k.kiln("get", "discovered")
	for _, mac := range []string{"52:54:00:00:00:31", "52:54:00:00:00:32"} {
		if !strings.Contains(out, mac) {
			t.Errorf("%s not discovered:\n%s", mac, out)
		}
	}
}
