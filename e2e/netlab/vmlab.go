package netlab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Firmware and BMC kinds of a VMLab VM.
const (
	BIOS       = "bios"        // SeaBIOS; network boot through the iPXE ROM (NICROM) from ipxe-qemu
	UEFI       = "uefi"        // OVMF; without NICROM its own PXE: DHCP arch 7, TFTP ipxe.efi
	IPMI       = "ipmi"        // the vBMC answers IPMI 2.0 (lanplus) on BMCAddr:623
	RedfishTLS = "redfish-tls" // the vBMC answers Redfish over HTTPS on BMCAddr:8443
)

// VMSpec is one VM of a VMLab: a QEMU guest (TCG) behind its own
// `kiln vbmc`, on a tap of the lab's bridge.
type VMSpec struct {
	Name     string // the Machine's name and the vBMC's system Id
	MAC      string // the boot NIC (virtio-net)
	Firmware string // BIOS or UEFI
	BMC      string // IPMI or RedfishTLS
	Memory   int    // MiB; default 1024
	CPUs     int    // default 1
	DiskSize int64  // bytes of the virtio disk (sparse raw file); default 2 GiB
	Serial   string // SMBIOS type 1 serial number; default KILN-<name>
	// NICROM loads the NIC's iPXE option ROM from ipxe-qemu (QEMU's
	// default). A BIOS VM needs it to network-boot; a UEFI VM without it
	// uses OVMF's own PXE (TFTP ipxe.efi), as real UEFI servers do.
	NICROM bool
}

// OSImage is an OS disk image the lab serves to the rack (an Image with
// purpose os).
type OSImage struct {
	Name   string // the Image's name
	Path   string // the file; its suffix (.raw, .raw.gz, .raw.zst) gives the format
	SHA256 string
	// Confirm is the Image's confirm field ("os" or "none"); empty leaves
	// it out.
	Confirm string
}

// VMLabConfig describes a VMLab.
type VMLabConfig struct {
	KilnBin string // the kiln binary (required)
	// AgentBin is the static machine agent for the ephemeral image;
	// empty builds one (BuildMachineAgent). Unused with Ephemeral.
	AgentBin string
	// Ephemeral is a folder built by `kiln image build-ephemeral` (see
	// BuildEphemeral); empty builds one into the lab's folder.
	Ephemeral string
	Rack      string       // default lab-r1
	Subnet    netip.Prefix // inside the lab's namespace only; default 192.168.77.0/24
	VMs       []VMSpec
	Images    []OSImage
	// ExternalEtcd runs etcd as processes of their own (kiln-lab-etcd,
	// EtcdMembers of them, default 1, forming one cluster) and every
	// `kiln server` on it; otherwise the first server embeds etcd.
	ExternalEtcd bool
	EtcdMembers  int
	Servers      int      // `kiln server` processes; default 1 (more need ExternalEtcd)
	RackAgents   int      // `kiln rack` agents of the rack; default 2
	ServerArgs   []string // more `kiln server` flags, e.g. --timeout-commissioning 10m
	RackArgs     []string // more `kiln rack` flags
	// AgentArgs are more kernel arguments for the ephemeral image, e.g.
	// kiln.lldp=5s where no switch sends LLDP (the agent's default is to
	// listen 31 s for a switch's 30-s frames).
	AgentArgs []string
	// Dir keeps the lab's files (repository, disks, logs, consoles) in a
	// fixed folder, emptied first, instead of a test temporary folder.
	Dir string
}

// etcdClientURL and etcdPeerURL are member i's URLs (member 0's client
// URL is EtcdURL, the embedded etcd's too).
func etcdClientURL(i int) string { return fmt.Sprintf("http://127.0.0.1:%d", 2379+10*i) }
func etcdPeerURL(i int) string   { return fmt.Sprintf("http://127.0.0.1:%d", 2380+10*i) }

// EtcdEndpoints is every etcd member's client URL, comma-separated, as
// --etcd-endpoints and KILN_ETCD_ENDPOINTS take them.
func (v *VMLab) EtcdEndpoints() string {
	var eps []string
	for i := range v.Config.EtcdMembers {
		eps = append(eps, etcdClientURL(i))
	}
	return strings.Join(eps, ",")
}

// Addresses and ports inside the lab's namespace.
const (
	EtcdURL      = "http://127.0.0.1:2379"
	MirrorPort   = 8000 // the lab's image mirror on the gateway
	BootHTTPPort = 8080 // the rack leader's HTTP boot server
	MetricsPort  = 9420 // server i listens on 127.0.0.1:9420+i
	APIPort      = 9443 // server i's region API is on 127.0.0.1:9443+i
	RackPort     = 9500 // rack agent i's /metrics on 127.0.0.1:9500+i
)

// VMLab is the virtual lab: one network namespace holding the rack's
// provisioning network (a bridge with the gateway address and one tap per
// VM), `kiln server` on a git repository of the lab's inventory, two
// `kiln rack` agents, one `kiln vbmc` per VM driving a QEMU guest, and an
// HTTP mirror of the ephemeral and OS images. Every address exists only
// inside the namespace; the BMCs listen on 127.0.1.<n>. Everything is torn
// down at the test's end (Lab.Close), also after a failure.
//
//	namespace "lab"
//	  br0 192.168.77.1/24 ── tap1 ── QEMU vm-1 (started by vbmc vm-1 on 127.0.1.1)
//	                      └─ tap2 ── QEMU vm-2 (vbmc vm-2 on 127.0.1.2)
//	  kiln server (etcd 127.0.0.1:2379, /metrics 127.0.0.1:9420), git repo
//	  kiln rack ×2 on br0 (DHCP, TFTP, HTTP boot :8080 by the leader)
//	  image mirror 192.168.77.1:8000
type VMLab struct {
	*Lab
	apiToken string // an operator token for the region API (Sync)
	Config   VMLabConfig
	NS       *NS    // the lab's namespace
	Bridge   string // br0
	Gateway  netip.Addr
	Repo     string // the inventory's git repository (a work tree)
	// Ephemeral is the ephemeral image served by the mirror.
	Ephemeral *Ephemeral
	Etcd      []*Proc // ExternalEtcd: the etcd members, etcd-0…
	Servers   []*Proc // `kiln server`
	Racks     []*Proc // `kiln rack` agents, rack-a, rack-b…
	VMs       []*LabVM
	// PasswordFile holds the BMCs' password (the inventory references it
	// with fromFile).
	PasswordFile string
	MirrorURL    string

	mirror *http.Server
}

// LabVM is a VM of the lab and its vBMC.
type LabVM struct {
	VMSpec
	Index    int        // 1-based
	IP       netip.Addr // its reservation
	Tap      string
	Disk     string
	StateDir string // the vBMC's QEMU state: serial.log, qemu.log, qmp.sock
	BMCAddr  string // the vBMC's address, as the inventory has it (127.0.1.n:623 or https://127.0.1.n:8443)
	CertFile string // RedfishTLS: the vBMC's certificate, the Machine's options.caFile
	VBMC     *Proc  // `kiln vbmc`
}

// SerialLog is the path of the VM's console of the current boot.
func (v *LabVM) SerialLog() string { return filepath.Join(v.StateDir, "serial.log") }

// NewVMLab builds and starts the lab: namespace, bridge, taps, mirror,
// git repository (rack, subnet and images; no machines: Enroll adds
// them), etcd and servers, rack agents (one leads, the images are in the
// rack's cache) and vBMCs (VMs off). It skips the test without root,
// QEMU, git or the kernel package.
func NewVMLab(t testing.TB, cfg VMLabConfig) *VMLab {
	t.Helper()
	RequireBinary(t, "qemu-system-x86_64", "git")
	if cfg.KilnBin == "" {
		t.Fatal("netlab: VMLabConfig.KilnBin is required")
	}
	if cfg.Rack == "" {
		cfg.Rack = "lab-r1"
	}
	if !cfg.Subnet.IsValid() {
		cfg.Subnet = netip.MustParsePrefix("192.168.77.0/24")
	}
	cfg.Subnet = cfg.Subnet.Masked()
	if !cfg.Subnet.Addr().Is4() || cfg.Subnet.Bits() > 24 {
		t.Fatalf("netlab: VMLab subnet %s: want an IPv4 /24 or larger", cfg.Subnet)
	}
	if cfg.Servers == 0 {
		cfg.Servers = 1
	}
	if cfg.Servers > 1 && !cfg.ExternalEtcd {
		t.Fatal("netlab: several kiln servers need ExternalEtcd")
	}
	if cfg.RackAgents == 0 {
		cfg.RackAgents = 2
	}
	if cfg.EtcdMembers == 0 || !cfg.ExternalEtcd {
		cfg.EtcdMembers = 1
	}
	l := New(t)
	if cfg.Dir != "" {
		if !filepath.IsAbs(cfg.Dir) || filepath.Dir(cfg.Dir) == cfg.Dir {
			t.Fatalf("netlab: VMLab Dir %q: want an absolute path below /", cfg.Dir)
		}
		if err := os.RemoveAll(cfg.Dir); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
			t.Fatal(err)
		}
		l.Dir = cfg.Dir
	}
	v := &VMLab{Lab: l, Config: cfg, Bridge: "br0", Gateway: hostAddr(cfg.Subnet, 1)}
	v.NS = l.NewNS("lab")
	v.NS.Bridge(v.Bridge)
	v.NS.AddAddr(v.Bridge, netip.PrefixFrom(v.Gateway, cfg.Subnet.Bits()).String())
	v.NS.IP("addr", "add", "127.0.1.0/24", "dev", "lo") // the BMCs' addresses
	v.PasswordFile = l.WriteFile("bmc-password", "kiln-lab-bmc\n")
	if err := os.Chmod(v.PasswordFile, 0o600); err != nil {
		t.Fatal(err)
	}

	for i, s := range cfg.VMs {
		v.VMs = append(v.VMs, v.newVM(i+1, s))
	}
	v.buildEphemeral()
	v.startMirror()
	v.initRepo()
	v.startEtcdAndServers()
	for i := range cfg.RackAgents {
		v.StartRackAgent(fmt.Sprintf("rack-%c", 'a'+i))
	}
	v.Leader(2 * time.Minute)
	v.waitImagesCached(5 * time.Minute)
	for _, vm := range v.VMs {
		v.startVBMC(vm)
	}
	return v
}

// hostAddr returns the n-th address of the prefix.
func hostAddr(p netip.Prefix, n int) netip.Addr {
	b := p.Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// VM returns the lab's VM by name, failing the test if there is none.
func (v *VMLab) VM(name string) *LabVM {
	v.T.Helper()
	for _, vm := range v.VMs {
		if vm.Name == name {
			return vm
		}
	}
	v.T.Fatalf("netlab: the lab has no VM %q", name)
	return nil
}

func (v *VMLab) newVM(i int, s VMSpec) *LabVM {
	t := v.T
	t.Helper()
	if s.Name == "" || s.MAC == "" {
		t.Fatalf("netlab: VM %d needs a name and a MAC", i)
	}
	switch s.Firmware {
	case BIOS, UEFI:
	default:
		t.Fatalf("netlab: VM %s: firmware %q, want %q or %q", s.Name, s.Firmware, BIOS, UEFI)
	}
	switch s.BMC {
	case IPMI, RedfishTLS:
	default:
		t.Fatalf("netlab: VM %s: BMC %q, want %q or %q", s.Name, s.BMC, IPMI, RedfishTLS)
	}
	if s.Memory == 0 {
		s.Memory = 1024
	}
	if s.CPUs == 0 {
		s.CPUs = 1
	}
	if s.DiskSize == 0 {
		s.DiskSize = 2 << 30
	}
	if s.Serial == "" {
		s.Serial = "KILN-" + s.Name
	}
	vm := &LabVM{VMSpec: s, Index: i, IP: hostAddr(v.Config.Subnet, 10+i), Tap: fmt.Sprintf("tap%d", i),
		StateDir: v.Path("vm-" + s.Name), Disk: v.Path("vm-" + s.Name + ".raw")}
	if err := os.MkdirAll(vm.StateDir, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(vm.Disk)
	if err == nil {
		err = errors.Join(f.Truncate(s.DiskSize), f.Close())
	}
	if err != nil {
		t.Fatalf("netlab: disk of %s: %v", s.Name, err)
	}
	v.NS.Tap(vm.Tap, v.Bridge)
	bmcIP := fmt.Sprintf("127.0.1.%d", i)
	if s.BMC == IPMI {
		vm.BMCAddr = bmcIP + ":623"
	} else {
		vm.BMCAddr = "https://" + bmcIP + ":8443"
		vm.CertFile = filepath.Join(vm.StateDir, "bmc.pem")
	}
	return vm
}

// buildEphemeral builds (or reads) the ephemeral image.
func (v *VMLab) buildEphemeral() {
	t := v.T
	t.Helper()
	if dir := v.Config.Ephemeral; dir != "" {
		e, err := ReadEphemeral(dir)
		if err != nil {
			t.Fatal(err)
		}
		v.Ephemeral = e
		return
	}
	agent := v.Config.AgentBin
	if agent == "" {
		agent = BuildMachineAgent(t, v.Dir)
	}
	start := time.Now()
	v.Ephemeral = BuildEphemeral(t, v.Config.KilnBin, agent, v.Path("ephemeral"), "", v.ephemeralCmdline())
	t.Logf("netlab: built the ephemeral image in %s", time.Since(start).Round(100*time.Millisecond))
}

// startMirror serves the ephemeral image (/ephemeral/) and the OS images
// (/os/<file name>) on the gateway, inside the namespace.
func (v *VMLab) startMirror() {
	t := v.T
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle("GET /ephemeral/", http.StripPrefix("/ephemeral/", http.FileServer(http.Dir(v.Ephemeral.Dir))))
	for _, im := range v.Config.Images {
		if im.Name == "" || im.Path == "" || im.SHA256 == "" {
			t.Fatalf("netlab: OS image %+v needs a name, a path and a sha256", im)
		}
		path := im.Path
		mux.HandleFunc("GET /os/"+filepath.Base(path), func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, path) })
	}
	addr := netip.AddrPortFrom(v.Gateway, MirrorPort).String()
	var ln net.Listener
	if err := v.NS.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatalf("netlab: the image mirror: %v", err)
	}
	v.mirror = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go v.mirror.Serve(ln)
	t.Cleanup(func() { v.mirror.Close() })
	v.MirrorURL = "http://" + addr
}

// startEtcdAndServers starts etcd (ExternalEtcd) and the servers, and
// waits for the first revision to be applied.
func (v *VMLab) startEtcdAndServers() {
	t := v.T
	t.Helper()
	if v.Config.ExternalEtcd {
		bin := filepath.Join(v.Dir, "kiln-lab-etcd")
		cmd := exec.Command("go", "build", "-o", bin, "github.com/kilnhq/kiln/e2e/cmd/kiln-lab-etcd")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("netlab: build kiln-lab-etcd: %v\n%s", err, out)
		}
		var cluster []string
		for i := range v.Config.EtcdMembers {
			cluster = append(cluster, fmt.Sprintf("etcd-%d=%s", i, etcdPeerURL(i)))
		}
		for i := range v.Config.EtcdMembers {
			name := fmt.Sprintf("etcd-%d", i)
			v.Etcd = append(v.Etcd, v.NS.Start(name, bin, "--data-dir", v.Path(name), "--name", name,
				"--listen-client", etcdClientURL(i), "--listen-peer", etcdPeerURL(i),
				"--initial-cluster", strings.Join(cluster, ",")))
		}
		for _, m := range v.Etcd {
			m.Expect(`etcd serving`, 2*time.Minute)
		}
	}
	for range v.Config.Servers {
		v.StartServer()
	}
	v.WaitSource("", 2*time.Minute)
}

// StartServer starts one more `kiln server` (region-<n>) on the lab's
// git repository and returns it; the lab stops it at the end. With the
// embedded etcd there is only one.
func (v *VMLab) StartServer() *Proc {
	t := v.T
	t.Helper()
	i := len(v.Servers)
	id := fmt.Sprintf("region-%d", i)
	args := []string{v.Config.KilnBin, "server", "--git", v.Repo, "--git-branch", "main", "--git-interval", "1h",
		"--data-dir", v.Path(id), "--listen", fmt.Sprintf("127.0.0.1:%d", MetricsPort+i),
		"--api", fmt.Sprintf("127.0.0.1:%d", APIPort+i), "--region-id", id}
	if v.Config.ExternalEtcd {
		args = append(args, "--embedded-etcd=false", "--etcd-endpoints", v.EtcdEndpoints())
	} else {
		if i > 0 {
			t.Fatal("netlab: a second kiln server needs ExternalEtcd")
		}
		args = append(args, "--etcd-listen-client", EtcdURL, "--etcd-listen-peer", "http://127.0.0.1:2380")
	}
	args = append(args, v.Config.ServerArgs...)
	p := v.NS.StartCmd(Cmd{Name: id, Args: args})
	v.Servers = append(v.Servers, p)
	return p
}

// StartRackAgent starts one more `kiln rack` agent of the rack, serving
// DHCP on the bridge and, when it leads, TFTP and HTTP boot on the
// gateway address, with its own image cache.
func (v *VMLab) StartRackAgent(id string) *Proc {
	t := v.T
	t.Helper()
	i := len(v.Racks)
	args := []string{v.Config.KilnBin, "rack", "--rack", v.Config.Rack, "--agent-id", id,
		"--interfaces", v.Bridge, "--listen", fmt.Sprintf("127.0.0.1:%d", RackPort+i),
		"--http", netip.AddrPortFrom(v.Gateway, BootHTTPPort).String(),
		"--tftp", netip.AddrPortFrom(v.Gateway, 69).String(),
		"--cache-dir", v.Path("cache-" + id), "--etcd-endpoints", v.EtcdEndpoints()}
	args = append(args, v.Config.RackArgs...)
	p := v.NS.StartCmd(Cmd{Name: id, Args: args})
	v.Racks = append(v.Racks, p)
	return p
}

// Leader waits until a rack agent that is still running says it leads the
// rack and returns it.
func (v *VMLab) Leader(timeout time.Duration) *Proc {
	t := v.T
	t.Helper()
	p, err := v.WaitLeader(nil, timeout)
	if err != nil {
		t.Fatalf("netlab: %v", err)
	}
	return p
}

// WaitLeader waits until one of the running rack agents other than
// except has said it leads since it started (or, for an agent that was
// running at mark time, since its Mark) and returns it.
func (v *VMLab) WaitLeader(except *Proc, timeout time.Duration) (*Proc, error) {
	deadline := time.Now().Add(timeout)
	for {
		for _, a := range v.Racks {
			if a == except || a.Exited() {
				continue
			}
			if strings.Contains(a.Log(), "leading the rack") {
				return a, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no rack agent of %s leads after %s: %w", v.Config.Rack, timeout, ErrTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitImagesCached waits until the rack has every image in its cache.
func (v *VMLab) waitImagesCached(timeout time.Duration) {
	t := v.T
	t.Helper()
	want := 1 + len(v.Config.Images)
	_, err := v.WaitKiln(timeout, func(out string) bool {
		return strings.Count(out, v.Config.Rack+"=ready") >= want
	}, "get", "images")
	if err != nil {
		t.Fatalf("netlab: the rack did not cache the %d images: %v", want, err)
	}
}

// startVBMC writes the VM's `kiln vbmc --config` file and starts it.
func (v *VMLab) startVBMC(vm *LabVM) {
	t := v.T
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "vms:\n  - name: %s\n", vm.Name)
	bmcIP := fmt.Sprintf("127.0.1.%d", vm.Index)
	if vm.BMC == IPMI {
		fmt.Fprintf(&b, "    ipmi: %s:623\n    redfish: \"\"\n", bmcIP)
	} else {
		fmt.Fprintf(&b, "    ipmi: \"\"\n    redfish: \"\"\n    redfishTLS: %s:8443\n    certOut: %s\n", bmcIP, vm.CertFile)
	}
	fmt.Fprintf(&b, "    admin: %s:8000\n", bmcIP)
	fmt.Fprintf(&b, "    passwordFile: %s\n    backend: qemu\n    qemu:\n", v.PasswordFile)
	fmt.Fprintf(&b, "      memory: %dM\n      cpus: %d\n      accel: tcg\n", vm.Memory, vm.CPUs)
	if vm.Firmware == UEFI {
		fmt.Fprintf(&b, "      firmware: %s\n", OVMFImage)
	}
	// A plain path: the vBMC gives the disk a device of its own, so that a
	// boot override can put it first under OVMF (bootindex).
	fmt.Fprintf(&b, "      disks: [%q]\n", vm.Disk)
	if !vm.NICROM {
		b.WriteString("      disableNICROM: true\n") // OVMF's own PXE: TFTP ipxe.efi
	}
	fmt.Fprintf(&b, "      nics: [{tap: %s, mac: %q, model: virtio-net-pci}]\n", vm.Tap, vm.MAC)
	fmt.Fprintf(&b, "      smbios: [%q]\n", "type=1,manufacturer=KilnLab,product=VMLab,serial="+vm.Serial)
	// TCG's CPU has no RDRAND: without an RNG device the kernel's random
	// pool takes minutes (docs/ephemeral.md).
	b.WriteString("      args: [\"-device\", \"virtio-rng-pci\"]\n")
	fmt.Fprintf(&b, "      stateDir: %s\n      gracefulTimeout: 20s\n", vm.StateDir)
	conf := filepath.Join(vm.StateDir, "vbmc.yaml")
	if err := os.WriteFile(conf, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	vm.VBMC = v.NS.StartCmd(Cmd{Name: "vbmc-" + vm.Name, Args: []string{v.Config.KilnBin, "vbmc", "--config", conf}})
	vm.VBMC.Expect(`virtual BMC running`, StartTimeout)
}

// OVMFImage is OVMF as one file, for QEMU's -bios (Debian's ovmf package).
const OVMFImage = "/usr/share/ovmf/OVMF.fd"

// Kiln runs the kiln CLI inside the lab's namespace (its etcd is the
// default endpoint there) and returns its combined output.
func (v *VMLab) Kiln(args ...string) (string, error) {
	cmd := v.NS.Command(append([]string{v.Config.KilnBin}, args...)...)
	cmd.Env = append(os.Environ(), "KILN_ETCD_ENDPOINTS="+v.EtcdEndpoints())
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kiln %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// MustKiln is Kiln failing the test on error.
func (v *VMLab) MustKiln(args ...string) string {
	v.T.Helper()
	out, err := v.Kiln(args...)
	if err != nil {
		v.T.Fatalf("netlab: %v", err)
	}
	return out
}

// WaitKiln re-runs a CLI command every half second until ok accepts its
// output, and returns that output.
func (v *VMLab) WaitKiln(timeout time.Duration, ok func(string) bool, args ...string) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		out, _ := v.Kiln(args...)
		if ok(out) {
			return out, nil
		}
		if time.Now().After(deadline) {
			return out, fmt.Errorf("kiln %s: not as wanted after %s: %w; last output:\n%s", strings.Join(args, " "), timeout, ErrTimeout, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// HTTPGet fetches a URL from inside the lab's namespace.
func (v *VMLab) HTTPGet(ctx context.Context, url string) (string, error) {
	client := &http.Client{Transport: &http.Transport{DialContext: v.DialContext}, Timeout: 30 * time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var b strings.Builder
	if _, err := io.Copy(&b, resp.Body); err != nil {
		return "", err
	}
	if resp.StatusCode/100 != 2 {
		return b.String(), fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return b.String(), nil
}

// DialContext opens a connection from inside the lab's namespace.
func (v *VMLab) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := v.NS.Do(func() (err error) {
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// MetricsURL is server i's /metrics inside the namespace.
func (v *VMLab) MetricsURL(i int) string {
	return "http://127.0.0.1:" + strconv.Itoa(MetricsPort+i) + "/metrics"
}
