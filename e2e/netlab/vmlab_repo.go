package netlab

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/kilnhq/kiln/inventory"
)

// The lab's inventory is a real git repository (branch main) that
// `kiln server --git` follows: rack.yaml (Rack and Subnet), images.yaml
// (the ephemeral image and the OS images) and machines/<name>.yaml, one
// Machine each, changed only by commits.

// SubnetName is the name of the lab's Subnet.
const SubnetName = "lab-net"

// EphemeralImageName is the name of the lab's ephemeral Image.
const EphemeralImageName = "kiln-ephemeral"

func (v *VMLab) git(args ...string) (string, error) {
	cmd := exec.Command("git", args...)
	cmd.Dir = v.Repo
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=lab", "GIT_AUTHOR_EMAIL=lab@kiln.invalid",
		"GIT_COMMITTER_NAME=lab", "GIT_COMMITTER_EMAIL=lab@kiln.invalid", "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("git %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// initRepo creates the repository with the rack, the subnet and the images.
func (v *VMLab) initRepo() {
	t := v.T
	t.Helper()
	v.Repo = v.Path("inventory")
	if err := os.MkdirAll(v.Repo, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := v.git("init", "-q", "-b", "main"); err != nil {
		t.Fatalf("netlab: %v", err)
	}
	if _, err := v.Commit("lab: rack, subnet and images", map[string]string{
		"rack.yaml":   v.RackYAML(),
		"images.yaml": v.ImagesYAML(),
	}); err != nil {
		t.Fatalf("netlab: %v", err)
	}
}

// RackYAML is the lab's Rack and Subnet: the gateway and .2–.9 reserved
// for the lab, VM n at .10+n, dynamic .200–.250.
func (v *VMLab) RackYAML() string { return v.RackYAMLWith("") }

// RackYAMLWith is RackYAML with the Rack's spec: YAML lines indented by
// two spaces, e.g. "  powerDrift: correct\n" ("" for none).
func (v *VMLab) RackYAMLWith(spec string) string {
	p := v.Config.Subnet
	rack := ""
	if spec != "" {
		rack = "spec:\n" + strings.TrimRight(spec, "\n") + "\n"
	}
	return fmt.Sprintf(`apiVersion: kiln.dev/v1alpha1
kind: Rack
metadata: {name: %s}
%s---
apiVersion: kiln.dev/v1alpha1
kind: Subnet
metadata: {name: %s}
spec:
  cidr: %s
  rack: %s
  mode: managed
  gateway: %s
  dns: [%s]
  domain: lab.kiln.test
  dynamicRange: {start: %s, end: %s}
  reserved: [{start: %s, end: %s}]
  leaseTime: 1h
`, v.Config.Rack, rack, SubnetName, p, v.Config.Rack, v.Gateway, v.Gateway,
		hostAddr(p, 200), hostAddr(p, 250), hostAddr(p, 2), hostAddr(p, 9))
}

// ephemeralCmdline is EphemeralCmdline with the lab's AgentArgs.
func (v *VMLab) ephemeralCmdline() string {
	return strings.Join(append([]string{EphemeralCmdline}, v.Config.AgentArgs...), " ")
}

// ImagesYAML is the ephemeral image and the OS images, with the mirror's
// URLs.
func (v *VMLab) ImagesYAML() string {
	e := v.Ephemeral
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: kiln.dev/v1alpha1
kind: Image
metadata: {name: %s}
spec:
  purpose: ephemeral
  arch: amd64
  kernel: {url: %q, sha256: %s}
  initrd: {url: %q, sha256: %s}
  cmdline: %q
`, EphemeralImageName, v.MirrorURL+"/ephemeral/vmlinuz", e.KernelSHA, v.MirrorURL+"/ephemeral/initramfs.cpio.gz", e.InitrdSHA, v.ephemeralCmdline())
	for _, im := range v.Config.Images {
		fmt.Fprintf(&b, `---
apiVersion: kiln.dev/v1alpha1
kind: Image
metadata: {name: %s}
spec:
  purpose: os
  arch: amd64
  disk: {url: %q, sha256: %s}
`, im.Name, v.MirrorURL+"/os/"+filepath.Base(im.Path), im.SHA256)
		if im.Confirm != "" {
			fmt.Fprintf(&b, "  confirm: %s\n", im.Confirm)
		}
	}
	return b.String()
}

// MachineOpts are the desired-state fields of a lab Machine.
type MachineOpts struct {
	State                string // ready (default) or deployed
	Image                string
	Erase                string
	UserData             string
	Maintenance          bool
	Adopt                bool // adopt: a running machine, recorded deployed without a power action
	CommissionGeneration int64
	DeployGeneration     int64
	Extra                string // more lines of spec, indented by two spaces
}

// MachineFile is the path of a VM's Machine in the repository.
func MachineFile(name string) string { return "machines/" + name + ".yaml" }

// MachineYAML is the Machine document of a lab VM: its MAC and
// reservation, firmware, and its vBMC (driver, address, the password by
// file, and for Redfish the vBMC's certificate as the CA).
func (v *VMLab) MachineYAML(vm *LabVM, o MachineOpts) string {
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata:
  name: %s
  labels: {lab: vmlab, firmware: %s, bmc: %s}
spec:
  firmware: %s
  interfaces:
    - {name: eno1, mac: %q, subnet: %s, ip: %s}
`, vm.Name, vm.Firmware, vm.BMC, vm.Firmware, vm.MAC, SubnetName, vm.IP)
	if o.State != "" {
		fmt.Fprintf(&b, "  state: %s\n", o.State)
	}
	if o.Image != "" {
		fmt.Fprintf(&b, "  image: %s\n", o.Image)
	}
	if o.Erase != "" {
		fmt.Fprintf(&b, "  erase: %s\n", o.Erase)
	}
	if o.Maintenance {
		b.WriteString("  maintenance: true\n")
	}
	if o.Adopt {
		b.WriteString("  adopt: true\n")
	}
	if o.CommissionGeneration != 0 {
		fmt.Fprintf(&b, "  commissionGeneration: %d\n", o.CommissionGeneration)
	}
	if o.DeployGeneration != 0 {
		fmt.Fprintf(&b, "  deployGeneration: %d\n", o.DeployGeneration)
	}
	if o.UserData != "" {
		b.WriteString("  userData: |\n")
		for _, line := range strings.Split(strings.TrimRight(o.UserData, "\n"), "\n") {
			b.WriteString("    " + line + "\n")
		}
	}
	driver := "ipmi"
	if vm.BMC == RedfishTLS {
		driver = "redfish"
	}
	fmt.Fprintf(&b, `  bmc:
    driver: %s
    address: %q
    username: admin
    password: {fromFile: %s}
`, driver, vm.BMCAddr, v.PasswordFile)
	if vm.BMC == RedfishTLS {
		fmt.Fprintf(&b, "    options: {caFile: %s, systemID: %s}\n", vm.CertFile, vm.Name)
	}
	if o.Extra != "" {
		b.WriteString(strings.TrimRight(o.Extra, "\n") + "\n")
	}
	return b.String()
}

// Commit writes the files (path in the repository → content; "" removes
// the file) and commits them with the message, returning the commit's
// hash. The server sees it at its next poll or Sync.
func (v *VMLab) Commit(msg string, files map[string]string) (string, error) {
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		full := filepath.Join(v.Repo, filepath.FromSlash(p))
		if files[p] == "" {
			if _, err := v.git("rm", "-q", "--ignore-unmatch", "--", p); err != nil {
				return "", err
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return "", err
		}
		if err := os.WriteFile(full, []byte(files[p]), 0o644); err != nil {
			return "", err
		}
		if _, err := v.git("add", "--", p); err != nil {
			return "", err
		}
	}
	if _, err := v.git("commit", "-q", "--allow-empty", "-m", msg); err != nil {
		return "", err
	}
	return v.git("rev-parse", "HEAD")
}

// Sync asks the region to pull now, through the region API of the first
// server that takes it (with an operator token the lab makes once), and
// waits until the source has observed the commit (applied, or rejected
// as invalid), returning the source's status.
func (v *VMLab) Sync(rev string, timeout time.Duration) (inventory.SourceStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if v.apiToken == "" {
		out, err := v.Kiln("token", "create", "--name", "netlab", "--role", "operator", "--expires", "0")
		if err != nil {
			return inventory.SourceStatus{}, err
		}
		v.apiToken = strings.TrimSpace(strings.SplitN(out, "\n", 2)[0])
	}
	client := &http.Client{Transport: &http.Transport{DialContext: v.DialContext}, Timeout: 10 * time.Second}
	for asked := false; !asked; {
		for i, s := range v.Servers {
			if s.Exited() {
				continue
			}
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/api/v1/sources/default/sync", APIPort+i), nil)
			req.Header.Set("Authorization", "Bearer "+v.apiToken)
			if resp, err := client.Do(req); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusAccepted {
					asked = true // one is enough: the request goes through etcd to the leader
					break
				}
			}
		}
		if !asked {
			select { // a new token reaches the servers' caches within a moment
			case <-ctx.Done():
				return inventory.SourceStatus{}, fmt.Errorf("no server took the sync request: %w", ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return v.waitSource(rev, timeout)
}

// WaitSource waits until the source has applied rev ("" for any
// revision), failing the test otherwise.
func (v *VMLab) WaitSource(rev string, timeout time.Duration) inventory.SourceStatus {
	v.T.Helper()
	st, err := v.waitSource(rev, timeout)
	if err == nil && st.State != "Applied" {
		err = fmt.Errorf("revision %s: %s: %s", inventory.ShortRevision(rev), st.State, st.Message)
	}
	if err != nil {
		v.T.Fatalf("netlab: %v", err)
	}
	return st
}

func (v *VMLab) waitSource(rev string, timeout time.Duration) (inventory.SourceStatus, error) {
	var st inventory.SourceStatus
	_, err := v.WaitKiln(timeout, func(out string) bool {
		var got inventory.SourceStatus
		if json.Unmarshal([]byte(out), &got) != nil {
			return false
		}
		st = got
		if rev == "" {
			return got.AppliedRevision != ""
		}
		return got.ObservedRevision == rev && (got.AppliedRevision == rev || got.State != "Applied")
	}, "get", "source", "default", "-o", "json")
	return st, err
}

// Apply commits the files, has the servers pull, and fails the test
// unless the commit is applied. It returns the commit's hash.
func (v *VMLab) Apply(msg string, files map[string]string) string {
	v.T.Helper()
	rev, err := v.Commit(msg, files)
	if err != nil {
		v.T.Fatalf("netlab: %v", err)
	}
	v.Sync(rev, 2*time.Minute)
	v.WaitSource(rev, 2*time.Minute)
	return rev
}

// Enroll commits a Machine (state ready) for each named VM and has it
// applied: the region starts commissioning them at once.
func (v *VMLab) Enroll(names ...string) string {
	v.T.Helper()
	files := map[string]string{}
	for _, n := range names {
		files[MachineFile(n)] = v.MachineYAML(v.VM(n), MachineOpts{State: "ready"})
	}
	return v.Apply("enroll "+strings.Join(names, ", "), files)
}
