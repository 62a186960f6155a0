package netlab

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// KernelDebCache is where .ci/run keeps Debian's kernel package
// (linux-image.deb) and its unpacked tree (linux/) for the tests that
// build the ephemeral image.
const KernelDebCache = "/var/cache/kiln-e2e"

// KernelPackage returns Debian's linux-image-amd64 package, which .ci/run
// keeps at /var/cache/kiln-e2e/linux-image.deb ($KILN_TEST_KERNEL_DEB
// overrides). It skips the test when there is none, and fails it under CI,
// whose script fetches it.
func KernelPackage(t testing.TB) string {
	t.Helper()
	for _, c := range []string{os.Getenv("KILN_TEST_KERNEL_DEB"), KernelDebCache + "/linux-image.deb"} {
		if c == "" {
			continue
		}
		if fi, err := os.Stat(c); err == nil && fi.Size() > 1<<20 {
			return c
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no kernel package: .ci/run keeps linux-image-amd64 at " + KernelDebCache + "/linux-image.deb")
	}
	t.Skip("no Debian kernel package: set KILN_TEST_KERNEL_DEB or run the kernel part of .ci/run once")
	return ""
}

// BuildMachineAgent builds the static machine agent (cmd/kiln-agent) into
// dir, or returns $KILN_TEST_AGENT when set.
func BuildMachineAgent(t testing.TB, dir string) string {
	t.Helper()
	if p := os.Getenv("KILN_TEST_AGENT"); p != "" {
		return p
	}
	bin := filepath.Join(dir, "kiln-agent")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/kilnhq/kiln/cmd/kiln-agent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the machine agent (CGO_ENABLED=0 go build ./cmd/kiln-agent): %v\n%s", err, out)
	}
	return bin
}

// Ephemeral is an ephemeral image built by `kiln image build-ephemeral`.
type Ephemeral struct {
	Dir                  string // vmlinuz, initramfs.cpio.gz, SHA256SUMS, image.yaml
	Kernel, Initrd       string // paths in Dir
	KernelSHA, InitrdSHA string
	Summary              string // what the build printed
}

// EphemeralCmdline is the kernel command line of the lab's ephemeral
// image: the console on the serial port QEMU logs, and a reboot rather
// than a hang on panic.
const EphemeralCmdline = "console=ttyS0,115200n8 panic=-1"

// BuildEphemeral runs `kiln image build-ephemeral` with the machine agent
// and Debian's kernel package (KernelPackage) into out; urlBase is where
// out will be served ("" for file://out). It skips the test without the
// kernel package.
func BuildEphemeral(t testing.TB, kilnBin, agentBin, out, urlBase, cmdline string) *Ephemeral {
	t.Helper()
	deb := KernelPackage(t)
	args := []string{"image", "build-ephemeral", "--agent", agentBin, "--kernel-deb", deb, "--out", out}
	if urlBase != "" {
		args = append(args, "--url-base", urlBase)
	}
	if cmdline != "" {
		args = append(args, "--cmdline", cmdline)
	}
	b, err := exec.Command(kilnBin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("kiln %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	e, err := ReadEphemeral(out)
	if err != nil {
		t.Fatal(err)
	}
	e.Summary = string(b)
	return e
}

// ReadEphemeral reads an ephemeral image folder's SHA256SUMS.
func ReadEphemeral(dir string) (*Ephemeral, error) {
	f, err := os.Open(filepath.Join(dir, "SHA256SUMS"))
	if err != nil {
		return nil, fmt.Errorf("ephemeral image in %s: %w", dir, err)
	}
	defer f.Close()
	e := &Ephemeral{Dir: dir, Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initramfs.cpio.gz")}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 2 {
			continue
		}
		switch strings.TrimPrefix(fields[1], "*") {
		case "vmlinuz":
			e.KernelSHA = fields[0]
		case "initramfs.cpio.gz":
			e.InitrdSHA = fields[0]
		}
	}
	if e.KernelSHA == "" || e.InitrdSHA == "" {
		return nil, fmt.Errorf("%s/SHA256SUMS lacks vmlinuz or initramfs.cpio.gz", dir)
	}
	return e, nil
}
