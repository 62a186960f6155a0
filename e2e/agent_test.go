//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf16"

	diskfs "github.com/diskfs/go-diskfs"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/kilnhq/kiln/e2e/netlab"
	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/spec/agentapi"
)

// The machine agent in a QEMU VM under TCG: the real ephemeral image,
// built by `kiln image build-ephemeral` from Debian's kernel package,
// served by a Kiln rack agent over the lab network, commissions the VM,
// deploys an OS image built here onto its virtual disk, refuses an image
// whose bytes do not match their sha256, and erases the disk quick and
// full. One VM boot per scenario; the test powers the VM itself (BMC
// manual) and sets the machine's boot purpose in etcd the way the region
// reconciler does.

const (
	agentMachine = "vm-agent"
	agentMAC     = "52:54:00:00:00:51"
	agentDisk    = 64 << 20 // the VM's virtio disk
	osImageSize  = 4 << 20  // the OS image deployed onto it
	sector       = 512
	// A boot under TCG: firmware, iPXE, 15 MiB over HTTP, the kernel, the
	// agent's work, power-off. About a minute; give it five.
	bootTimeout = 5 * time.Minute
)

// runKiln runs the kiln CLI here (not in a namespace) and fails on error.
func runKiln(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(kilnBin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("kiln %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// agentCmdline is the ephemeral image's kernel command line: no switch
// sends LLDP here, so the agent listens 3 s rather than its default 31 s.
const agentCmdline = "console=ttyS0 panic=-1 kiln.lldp=3s"

func TestAgentInAVM(t *testing.T) {
	netlab.Require(t)
	netlab.RequireBinary(t, "qemu-system-x86_64", "cloud-init")
	deb := netlab.KernelPackage(t)
	work := t.TempDir()
	agentBin := netlab.BuildMachineAgent(t, work)

	// The ephemeral image, from the kernel package; then again from the
	// same kernel unpacked: the same bytes.
	eph := filepath.Join(work, "ephemeral")
	t.Logf("kiln image build-ephemeral:\n%s", runKiln(t, "image", "build-ephemeral", "--agent", agentBin,
		"--kernel-deb", deb, "--out", eph, "--cmdline", agentCmdline))
	if tree := "/var/cache/kiln-e2e/linux"; dirExists(tree) {
		again := filepath.Join(work, "again")
		kernels, _ := filepath.Glob(tree + "/boot/vmlinuz-*")
		if len(kernels) == 1 {
			runKiln(t, "image", "build-ephemeral", "--agent", agentBin, "--kernel", kernels[0], "--modules", tree,
				"--out", again, "--url-base", "file://"+eph, "--cmdline", agentCmdline)
			for _, f := range []string{"initramfs.cpio.gz", "image.yaml", "SHA256SUMS"} {
				if a, b := readFile(t, filepath.Join(eph, f)), readFile(t, filepath.Join(again, f)); !bytes.Equal(a, b) {
					t.Errorf("%s differs between a build from the package and one from the unpacked tree", f)
				}
			}
		}
	}

	osImage := gptImage(t)
	osPath := filepath.Join(work, "os.raw")
	writeFile(t, osPath, osImage)
	osSHA := sha(osImage)
	disk := filepath.Join(work, "disk.raw")
	writeFile(t, disk, make([]byte, agentDisk))

	src := t.TempDir()
	writeFile(t, filepath.Join(src, "ephemeral.yaml"), readFile(t, filepath.Join(eph, "image.yaml")))
	fleet := func(erase string) []byte {
		return fmt.Appendf(nil, labRackDoc+`apiVersion: kiln.dev/v1alpha1
kind: Image
metadata: {name: test-os}
spec:
  purpose: os
  disk: {url: "file://%s", sha256: "%s"}
---
apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: %s}
spec:
  firmware: bios
  interfaces: [{name: eno1, mac: "%s", subnet: lab-net, ip: 10.42.0.51}]
  bmc: {driver: manual}
  image: test-os
  erase: %s
  # The test sets the boot purpose itself; maintenance keeps a region
  # reconciler's hands off the machine.
  maintenance: true
  userData: |
    #cloud-config
    hostname: vm-agent
    write_files:
      - path: /etc/kiln-e2e
        content: deployed by the e2e test
`, osPath, osSHA, agentMachine, agentMAC, erase)
	}
	writeFile(t, filepath.Join(src, "fleet.yaml"), fleet("quick"))

	r := netlab.Rack(t)
	k := &kilnRack{t: t, r: r, src: src, data: t.TempDir()}
	k.startServer()
	cacheDir := t.TempDir()
	rack := k.startAgent("agent-0", nil, "--http", "10.42.0.1:8080", "--tftp", "10.42.0.1:69", "--cache-dir", cacheDir)
	rack.Expect(`serving HTTP boot`, 60*time.Second)
	k.waitCLI("the images in the rack's cache", func(out string) bool {
		return strings.Count(out, "r1=ready") >= 2
	}, "get", "images")
	st := newStatusClient(t, r.Srv)
	tap := r.Tap("tap-agent")
	serial := fmt.Sprintf("KILN-%08d", mrand.IntN(1e8))
	uuid := randomUUID()

	// boot powers the VM on with the purpose set, waits for it to power
	// itself off, and returns its console and what the rack stored of
	// the agent's reports (reports/<rack>/<machine>).
	boot := func(t *testing.T, purpose string) (string, inventory.MachineReport) {
		t.Helper()
		st.clearReport(t)
		st.update(t, func(s *inventory.MachineStatus) { s.BootPurpose = purpose })
		st.pendingBoot(t, purpose) // what the rack writes for a netboot task
		start := time.Now()
		vm := netlab.QEMU(r.Switch, netlab.QEMUOpts{Tap: tap, MAC: agentMAC, Memory: 1024, Args: []string{
			"-smp", "2",
			"-smbios", fmt.Sprintf("type=1,manufacturer=KilnLab,product=E2E,serial=%s,uuid=%s", serial, uuid),
			"-drive", "file=" + disk + ",format=raw,if=virtio,cache=writeback",
			// TCG's CPU has no RDRAND: without an RNG device the kernel's
			// random pool takes minutes, and getrandom with it.
			"-device", "virtio-rng-pci",
		}})
		// Not vm.Expect: it fails the top-level test, and this is a subtest.
		if _, err := vm.WaitLog(`kiln-agent`, bootTimeout); err != nil {
			t.Fatalf("%s: %v\nconsole:\n%s", purpose, err, tailString(vm.Log(), 6000))
		}
		t.Logf("%s: power-on to the agent's start in %s", purpose, time.Since(start).Round(time.Second))
		if purpose == "commission" {
			// After commissioning the agent asks for a next task (fast
			// track) until the region decides; decide as a region does for
			// a machine to stay ready: power it off.
			if _, err := vm.WaitLog(`kiln-agent: result reported`, bootTimeout); err != nil {
				t.Fatalf("%s: %v\nconsole:\n%s", purpose, err, tailString(vm.Log(), 6000))
			}
			st.update(t, func(s *inventory.MachineStatus) { s.BootPurpose = "off" })
		}
		if err := vm.Wait(bootTimeout); err != nil {
			t.Fatalf("%s: the VM did not power off: %v\nconsole:\n%s", purpose, err, agentLines(vm.Log()))
		}
		t.Logf("%s: power-on to power-off in %s; the agent said:\n%s", purpose, time.Since(start).Round(time.Second), agentLines(vm.Log()))
		s := st.report(t)
		if s.Result == nil {
			t.Fatalf("%s: the VM powered off without a result in the rack's report\nconsole:\n%s", purpose, tailString(vm.Log(), 6000))
		}
		return vm.Log(), s
	}

	t.Run("commission", func(t *testing.T) {
		_, s := boot(t, "commission")
		if !s.Result.Success {
			t.Fatalf("commission failed: %s", s.Result.Reason)
		}
		var f agentapi.Facts
		if err := json.Unmarshal(s.Facts, &f); err != nil {
			t.Fatalf("facts: %v\n%s", err, s.Facts)
		}
		if f.CPU.Count != 2 {
			t.Errorf("CPUs: %d, want 2 (-smp 2)", f.CPU.Count)
		}
		// MemTotal is RAM less what firmware and the kernel keep.
		if mib := f.Memory.TotalBytes >> 20; mib < 850 || mib > 1024 {
			t.Errorf("memory: %d MiB, want 850 to 1024 (-m 1024)", mib)
		}
		if len(f.Disks) != 1 || f.Disks[0].SizeBytes != agentDisk {
			t.Errorf("disks: %+v, want one of %d bytes", f.Disks, agentDisk)
		}
		if len(f.NICs) != 1 || f.NICs[0].MAC != agentMAC || f.NICs[0].Driver != "virtio_net" {
			t.Errorf("NICs: %+v, want one virtio_net with %s", f.NICs, agentMAC)
		}
		if f.DMI.Vendor != "KilnLab" || f.DMI.Product != "E2E" || f.DMI.Serial != serial || !strings.EqualFold(f.DMI.UUID, uuid) {
			t.Errorf("DMI: %+v, want KilnLab, E2E, %s, %s", f.DMI, serial, uuid)
		}
		t.Logf("facts: %d CPUs (%s), MemTotal %d MiB, disks %+v, NICs %+v, DMI %+v", f.CPU.Count, f.CPU.Model,
			f.Memory.TotalBytes>>20, f.Disks, f.NICs, f.DMI)
		if len(f.Errors) > 0 {
			t.Logf("collectors that failed: %v", f.Errors)
		}
	})

	t.Run("deploy", func(t *testing.T) {
		_, s := boot(t, "deploy")
		if !s.Result.Success {
			t.Fatalf("deploy failed: %s", s.Result.Reason)
		}
		d := readFile(t, disk)
		checkDeployed(t, d, osImage, osSHA)
		seed := seedFiles(t, disk, d)
		for _, f := range []string{"meta-data", "user-data", "network-config"} {
			if _, ok := seed[f]; !ok {
				t.Errorf("the NoCloud seed lacks %s (has %v)", f, keys(seed))
			}
		}
		if ud := seed["user-data"]; !bytes.Contains(ud, []byte("deployed by the e2e test")) {
			t.Errorf("user-data is not the machine's:\n%s", ud)
		}
		if md := seed["meta-data"]; !bytes.Contains(md, []byte(agentMachine)) {
			t.Errorf("meta-data does not name the machine:\n%s", md)
		}
		ud := filepath.Join(t.TempDir(), "user-data")
		writeFile(t, ud, seed["user-data"])
		if out, err := exec.Command("cloud-init", "schema", "--config-file", ud).CombinedOutput(); err != nil {
			t.Errorf("cloud-init schema rejects the seed's user-data: %v\n%s\n%s", err, out, seed["user-data"])
		} else {
			t.Logf("cloud-init schema: %s", bytes.TrimSpace(out))
		}
	})

	// The rack's cache serves only images it verified when it fetched
	// them; a file that rots there afterwards is sent as it is, and only
	// the agent's own sha256, computed while it writes, can tell.
	t.Run("wrong-sha256", func(t *testing.T) {
		cached := filepath.Join(cacheDir, "sha256", osSHA)
		f, err := os.OpenFile(cached, os.O_RDWR, 0)
		if err != nil {
			t.Fatalf("the OS image in the rack's cache: %v", err)
		}
		b := make([]byte, 1)
		f.ReadAt(b, 3<<20)
		b[0] ^= 0xff
		if _, err := f.WriteAt(b, 3<<20); err != nil {
			t.Fatal(err)
		}
		f.Close()
		console, s := boot(t, "deploy")
		if s.Result.Success {
			t.Fatalf("a deploy of bytes that do not hash to the image's sha256 succeeded\n%s", agentLines(console))
		}
		if !strings.Contains(strings.ToLower(s.Result.Reason), "sha256") || !strings.Contains(s.Result.Reason, osSHA) {
			t.Errorf("the failure's reason does not say the sha256 %s did not match: %q", osSHA, s.Result.Reason)
		}
		if !strings.Contains(console, "sha256") {
			t.Errorf("the console does not say why the deploy failed:\n%s", agentLines(console))
		}
		t.Logf("status result: %+v", *s.Result)
	})

	t.Run("erase-quick", func(t *testing.T) {
		pattern := fillDisk(t, disk, osImage)
		_, s := boot(t, "erase")
		if !s.Result.Success {
			t.Fatalf("erase failed: %s", s.Result.Reason)
		}
		d := readFile(t, disk)
		if i := nonZero(d[:1<<20]); i >= 0 {
			t.Errorf("quick erase left byte %d of the first MiB non-zero", i)
		}
		if i := nonZero(d[len(d)-1<<20:]); i >= 0 {
			t.Errorf("quick erase left byte %d of the last MiB non-zero", len(d)-1<<20+i)
		}
		// The image's partition starts at 1 MiB: its file system's
		// signatures are gone too.
		if i := nonZero(d[1<<20 : 2<<20]); i >= 0 {
			t.Errorf("quick erase left byte %d of the partition's first MiB non-zero", 1<<20+i)
		}
		// Quick is not full: most of the rest is as it was.
		mid, kept := d[1<<20:len(d)-1<<20], 0
		for i := range mid {
			if mid[i] == pattern[1<<20+i] {
				kept++
			}
		}
		if kept < len(mid)*9/10 {
			t.Errorf("quick erase changed %d of the %d bytes between the first and last MiB", len(mid)-kept, len(mid))
		}
	})

	t.Run("erase-full", func(t *testing.T) {
		before := k.server.Mark()
		writeFile(t, filepath.Join(src, "fleet.yaml"), fleet("full"))
		// The region applies the edit; the rack follows within
		// milliseconds, long before the VM asks for its task.
		if _, err := k.server.WaitLogFrom(before, `revision applied`, 60*time.Second); err != nil {
			t.Fatalf("the edit to erase: full was not applied: %v", err)
		}
		fillDisk(t, disk, osImage)
		console, s := boot(t, "erase")
		if !s.Result.Success {
			t.Fatalf("erase failed: %s", s.Result.Reason)
		}
		if !strings.Contains(console, "full") {
			t.Errorf("the agent's console does not mention a full erase:\n%s", agentLines(console))
		}
		if i := nonZero(readFile(t, disk)); i >= 0 {
			t.Errorf("full erase left byte %d non-zero", i)
		}
	})
}

// checkDeployed compares the disk with the image: its first N bytes hash
// to the image's sha256 once the primary GPT (header and entries, which
// the agent rewrites to add the seed partition) is put back as the image
// had it; the image's own partition entries are unchanged.
func checkDeployed(t *testing.T, disk, img []byte, want string) {
	t.Helper()
	n := len(img)
	got := bytes.Clone(disk[:n])
	copy(got[1*sector:34*sector], img[1*sector:34*sector])
	if sha(got) != want {
		var diff []string
		for s := 0; s < n/sector; s++ {
			if !bytes.Equal(got[s*sector:(s+1)*sector], img[s*sector:(s+1)*sector]) {
				diff = append(diff, fmt.Sprint(s))
			}
		}
		if len(diff) > 20 {
			diff = append(diff[:20], "…")
		}
		t.Errorf("the disk's first %d bytes (primary GPT as the image's) do not hash to %s; sectors that differ: %s", n, want, strings.Join(diff, " "))
	}
	if !bytes.Equal(disk[2*sector:2*sector+128], img[2*sector:2*sector+128]) {
		t.Errorf("the image's partition entry was changed:\n% x\nwant\n% x", disk[2*sector:2*sector+128], img[2*sector:2*sector+128])
	}
}

// seedFiles finds the partition that starts past the image's end, checks
// that its file system is labelled cidata, and returns its files.
func seedFiles(t *testing.T, path string, d []byte) map[string][]byte {
	t.Helper()
	if string(d[sector:sector+8]) != "EFI PART" {
		t.Fatalf("no GPT header at LBA 1 after the deploy")
	}
	count := binary.LittleEndian.Uint32(d[sector+80:])
	size := binary.LittleEndian.Uint32(d[sector+84:])
	entries := binary.LittleEndian.Uint64(d[sector+72:])
	idx := 0
	for i := 0; i < int(count); i++ {
		e := d[int(entries)*sector+i*int(size):][:size]
		if bytes.Equal(e[:16], make([]byte, 16)) {
			continue
		}
		if first := binary.LittleEndian.Uint64(e[32:]); first*sector >= osImageSize {
			idx = i + 1
			t.Logf("seed partition %d: LBA %d to %d, name %q", idx, first, binary.LittleEndian.Uint64(e[40:]), gptName(e[56:128]))
		}
	}
	if idx == 0 {
		t.Fatalf("no partition past the image's end (%d bytes): no NoCloud seed", osImageSize)
	}
	dk, err := diskfs.Open(path, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer dk.Close()
	fsys, err := dk.GetFilesystem(idx)
	if err != nil {
		t.Fatalf("the seed partition holds no file system Kiln's test can read: %v", err)
	}
	if l := strings.TrimSpace(fsys.Label()); !strings.EqualFold(l, "cidata") {
		t.Errorf("the seed's file system is labelled %q; cloud-init's NoCloud looks for cidata", l)
	}
	files := map[string][]byte{}
	ents, err := fs.ReadDir(fsys, ".")
	if err != nil {
		ents, err = fs.ReadDir(fsys, "/")
	}
	if err != nil {
		t.Fatalf("list the seed: %v", err)
	}
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		name := strings.ToLower(e.Name())
		b, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			b, err = fs.ReadFile(fsys, "/"+e.Name())
		}
		if err != nil {
			t.Fatalf("read %s from the seed: %v", e.Name(), err)
		}
		files[name] = b
	}
	return files
}

func gptName(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}

// gptImage builds a small GPT disk image: one Linux partition from 1 MiB
// to 3 MiB holding recognisable bytes, and the backup GPT at its end.
func gptImage(t *testing.T) []byte {
	t.Helper()
	img := make([]byte, osImageSize)
	sectors := uint64(osImageSize / sector)
	first, last := uint64(2048), uint64(6143)
	part := img[first*sector : (last+1)*sector]
	for i := 0; i < len(part); i += 4096 {
		copy(part[i:], fmt.Sprintf("KILN E2E ROOT PARTITION block %d ", i/4096))
	}
	rand.Read(part[len(part)/2 : len(part)/2+4096])

	// Protective MBR.
	mbr := img[:sector]
	mbr[446+4] = 0xee
	binary.LittleEndian.PutUint32(mbr[446+8:], 1)
	binary.LittleEndian.PutUint32(mbr[446+12:], uint32(sectors-1))
	mbr[510], mbr[511] = 0x55, 0xaa

	// One partition entry: Linux filesystem, fixed unique GUID.
	entries := make([]byte, 128*128)
	copy(entries[0:16], guid("0FC63DAF-8483-4772-8E79-3D69D8477DE4"))
	copy(entries[16:32], guid("6B696C6E-6532-4565-8000-000000000001"))
	binary.LittleEndian.PutUint64(entries[32:], first)
	binary.LittleEndian.PutUint64(entries[40:], last)
	for i, c := range utf16.Encode([]rune("kiln-e2e-root")) {
		binary.LittleEndian.PutUint16(entries[56+2*i:], c)
	}
	entriesCRC := crc32.ChecksumIEEE(entries)
	header := func(self, alt, entriesLBA uint64) []byte {
		h := make([]byte, sector)
		copy(h, "EFI PART")
		binary.LittleEndian.PutUint32(h[8:], 0x00010000)
		binary.LittleEndian.PutUint32(h[12:], 92)
		binary.LittleEndian.PutUint64(h[24:], self)
		binary.LittleEndian.PutUint64(h[32:], alt)
		binary.LittleEndian.PutUint64(h[40:], 34)
		binary.LittleEndian.PutUint64(h[48:], sectors-34)
		copy(h[56:72], guid("6B696C6E-6532-4565-8000-0000000000D1"))
		binary.LittleEndian.PutUint64(h[72:], entriesLBA)
		binary.LittleEndian.PutUint32(h[80:], 128)
		binary.LittleEndian.PutUint32(h[84:], 128)
		binary.LittleEndian.PutUint32(h[88:], entriesCRC)
		binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:92]))
		return h
	}
	copy(img[1*sector:], header(1, sectors-1, 2))
	copy(img[2*sector:], entries)
	copy(img[(sectors-33)*sector:], entries)
	copy(img[(sectors-1)*sector:], header(sectors-1, 1, sectors-33))
	return img
}

// guid encodes a GUID in GPT's mixed-endian layout.
func guid(s string) []byte {
	raw, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(raw) != 16 {
		panic("bad GUID " + s)
	}
	out := make([]byte, 16)
	binary.LittleEndian.PutUint32(out[0:], binary.BigEndian.Uint32(raw[0:]))
	binary.LittleEndian.PutUint16(out[4:], binary.BigEndian.Uint16(raw[4:]))
	binary.LittleEndian.PutUint16(out[6:], binary.BigEndian.Uint16(raw[6:]))
	copy(out[8:], raw[8:16])
	return out
}

// fillDisk fills the VM's disk with a pattern and the OS image at its
// start (partition table and all), and returns what it wrote.
func fillDisk(t *testing.T, path string, img []byte) []byte {
	t.Helper()
	d := bytes.Repeat([]byte("kiln-e2e-data\xa5\x5a\x00"), agentDisk/16)
	copy(d, img)
	writeFile(t, path, d)
	return d
}

func nonZero(b []byte) int {
	for i, c := range b {
		if c != 0 {
			return i
		}
	}
	return -1
}

// statusClient reads and writes status/machines/vm-agent in the etcd
// that kiln server runs on srv's loopback: the connections are opened
// inside srv.
type statusClient struct {
	store     *inventory.Store
	key       string
	reportKey string // the agent's reports, under rack r1's prefix
}

func newStatusClient(t *testing.T, srv *netlab.NS) *statusClient {
	t.Helper()
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		var c net.Conn
		err := srv.Do(func() (err error) {
			c, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			return err
		})
		return c, err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"127.0.0.1:2379"}, DialTimeout: 10 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(dial)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	s := inventory.NewStore(cli, "", slog.New(slog.DiscardHandler))
	return &statusClient{store: s, key: s.Keys().MachineStatus(agentMachine), reportKey: s.Keys().Report("r1", agentMachine)}
}

// report reads the rack's report of the machine's boot.
func (c *statusClient) report(t *testing.T) inventory.MachineReport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := inventory.GetJSON[inventory.MachineReport](ctx, c.store, c.reportKey)
	if err != nil && !errors.Is(err, inventory.ErrNotFound) {
		t.Fatalf("read %s: %v", c.reportKey, err)
	}
	return r
}

// clearReport deletes the rack's report before the next boot.
func (c *statusClient) clearReport(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.store.Client().Delete(ctx, c.reportKey); err != nil {
		t.Fatalf("delete %s: %v", c.reportKey, err)
	}
}

// pendingBoot writes the pending boot-token record a netboot power task
// makes the rack write before it powers the machine on: this test powers
// the VM itself, and without the record its script carries no token.
func (c *statusClient) pendingBoot(t *testing.T, purpose string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := c.store.Tokens("r1").Put(ctx, agentMachine, inventory.BootToken{
		State: inventory.TokenPending, TaskID: "e2e-" + purpose + "-" + randomUUID()[:8], Purpose: purpose})
	if err != nil {
		t.Fatalf("pending boot token: %v", err)
	}
}

func (c *statusClient) update(t *testing.T, fn func(*inventory.MachineStatus)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := inventory.UpdateJSON(ctx, c.store, c.key, func(s *inventory.MachineStatus) error { fn(s); return nil }); err != nil {
		t.Fatalf("update %s: %v", c.key, err)
	}
}

// agentLines are the agent's lines of a console log: what it says and
// what it logs.
func agentLines(console string) string {
	var out []string
	for _, l := range strings.Split(console, "\n") {
		l = strings.TrimRight(l, "\r")
		if strings.HasPrefix(l, "time=") && strings.Contains(l, " level=") {
			out = append(out, "  "+l)
		} else if i := strings.Index(l, "kiln-agent"); i >= 0 {
			out = append(out, "  "+l[i:])
		}
	}
	return strings.Join(out, "\n")
}

func randomUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func tailString(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

func dirExists(p string) bool { fi, err := os.Stat(p); return err == nil && fi.IsDir() }

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func keys(m map[string][]byte) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}
