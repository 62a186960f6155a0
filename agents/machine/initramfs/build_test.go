package initramfs

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ulikunitz/xz"
	"gopkg.in/yaml.v3"

	"github.com/kilnhq/kiln/spec"
)

// The fixture: testdata/lib/modules/6.1.0-test, as depmod leaves a
// kernel's folder: modules.dep, modules.builtin, fake modules, some
// compressed (.ko.xz with xz --check=crc32 as kmod does, .ko.zst).
const fixture = "testdata/lib/modules/6.1.0-test"

func TestResolve(t *testing.T) {
	t.Parallel()
	tree, err := OpenTree(fixture)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name                    string
		drivers                 []string
		modules, builtin, missg []string
		err                     string
	}{
		{
			name:    "dependencies first, deterministic",
			drivers: []string{"virtio_pci", "virtio_net"},
			modules: []string{"virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci", "failover", "net_failover", "virtio_net"},
		},
		{
			name:    "request order is kept",
			drivers: []string{"virtio_net", "virtio_pci"},
			modules: []string{"failover", "net_failover", "virtio_ring", "virtio", "virtio_net", "virtio_pci_modern_dev", "virtio_pci"},
		},
		{
			name:    "dashes and underscores are one name",
			drivers: []string{"nvme", "nvme-core", "nvme_core"},
			modules: []string{"nvme_core", "nvme"},
		},
		{
			name:    "compressed chain",
			drivers: []string{"e1000e"},
			modules: []string{"pps_core", "ptp", "e1000e"},
		},
		{
			name:    "built in and missing",
			drivers: []string{"af_packet", "sd_mod", "scsi_mod", "no_such_nic", "af_packet"},
			modules: []string{"sd_mod"}, builtin: []string{"af_packet", "scsi_mod"}, missg: []string{"no_such_nic"},
		},
		{
			name:    "a module outside modules.dep is still found",
			drivers: []string{"unlisted"},
			modules: []string{"unlisted"},
		},
		{
			name:    "soft dependencies by alias, before the module",
			drivers: []string{"libcrc32c"},
			modules: []string{"crc32c_generic", "crc32c_intel", "libcrc32c"},
		},
		{
			name:    "a dependency that is nowhere",
			drivers: []string{"broken"},
			err:     "broken needs module gone, which is neither in",
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			sel, err := tree.Resolve(c.drivers)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err = %v, want %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(sel.Modules, c.modules) || !slices.Equal(sel.Builtin, c.builtin) || !slices.Equal(sel.Missing, c.missg) {
				t.Errorf("got modules %v builtin %v missing %v\nwant modules %v builtin %v missing %v",
					sel.Modules, sel.Builtin, sel.Missing, c.modules, c.builtin, c.missg)
			}
		})
	}
}

// Without modules.dep (Debian's kernel packages ship none: depmod runs at
// install), dependencies come from each module's .modinfo.
func TestResolveFromModinfo(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "lib/modules/6.1.0-elf")
	write := func(rel string, data []byte) {
		t.Helper()
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("kernel/drivers/virtio/virtio_ring.ko", module(t, "virtio_ring", ""))
	write("kernel/drivers/virtio/virtio.ko", module(t, "virtio", "virtio_ring"))
	write("kernel/net/core/failover.ko", module(t, "failover", ""))
	write("kernel/drivers/net/net_failover.ko", module(t, "net_failover", "failover"))
	var xzMod bytes.Buffer
	zw, _ := xz.NewWriter(&xzMod)
	zw.Write(module(t, "virtio_net", "net_failover,virtio,virtio_ring"))
	zw.Close()
	write("kernel/drivers/net/virtio_net.ko.xz", xzMod.Bytes())
	write("kernel/drivers/nvme/host/nvme-core.ko", module(t, "nvme-core", ""))
	write("kernel/drivers/nvme/host/nvme.ko", module(t, "nvme", "nvme-core"))
	write("kernel/drivers/bad/notelf.ko", []byte("not a module"))
	write("kernel/lib/libcrc32c.ko", module(t, "libcrc32c", "", "pre: crc32c"))
	write("kernel/crypto/crc32c_generic.ko", module(t, "crc32c_generic", "", "", "crypto-crc32c", "crc32c"))
	write("modules.builtin", []byte("kernel/net/packet/af_packet.ko\n"))

	dir, err := FindModules(filepath.Dir(filepath.Dir(filepath.Dir(dir))), "")
	if err != nil {
		t.Fatal(err)
	}
	tree, err := OpenTree(dir)
	if err != nil {
		t.Fatal(err)
	}
	sel, err := tree.Resolve([]string{"virtio_net", "nvme", "af_packet", "libcrc32c"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"failover", "net_failover", "virtio_ring", "virtio", "virtio_net", "nvme_core", "nvme", "crc32c_generic", "libcrc32c"}
	if !slices.Equal(sel.Modules, want) || !slices.Equal(sel.Builtin, []string{"af_packet"}) {
		t.Errorf("modules %v builtin %v, want %v [af_packet]", sel.Modules, sel.Builtin, want)
	}
	if _, err := tree.Resolve([]string{"notelf"}); err == nil || !strings.Contains(err.Error(), "not an ELF object") {
		t.Errorf("a module that is not ELF: %v", err)
	}
}

func TestFindModules(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	if _, err := FindModules(root, ""); err == nil || !strings.Contains(err.Error(), "no lib/modules") {
		t.Errorf("empty root: %v", err)
	}
	for _, r := range []string{"6.1.0-1-amd64", "6.12.0-2-amd64"} {
		os.MkdirAll(filepath.Join(root, "usr/lib/modules", r), 0o755)
	}
	if _, err := FindModules(root, ""); err == nil || !strings.Contains(err.Error(), "(6.1.0-1-amd64, 6.12.0-2-amd64): choose one with --release") {
		t.Errorf("two releases: %v", err)
	}
	if d, err := FindModules(root, "6.12.0-2-amd64"); err != nil || d != filepath.Join(root, "usr/lib/modules/6.12.0-2-amd64") {
		t.Errorf("chosen release: %q %v", d, err)
	}
}

func buildFixture(t *testing.T, out string, o Options) *Result {
	t.Helper()
	agent := filepath.Join(t.TempDir(), "kiln-agent")
	if err := os.WriteFile(agent, staticAgent(t), 0o755); err != nil {
		t.Fatal(err)
	}
	o.Agent, o.Kernel, o.Modules, o.Out = agent, "testdata/boot/vmlinuz-6.1.0-test", fixture, out
	if o.Name == "" {
		o.Name = "kiln-ephemeral"
	}
	if o.Drivers == nil {
		o.Drivers = []string{"virtio_pci", "virtio_net", "e1000e", "af_packet", "no_such_nic"}
	}
	res, err := Build(o)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestBuildIsReproducible(t *testing.T) {
	t.Parallel()
	a, b := t.TempDir(), t.TempDir()
	buildFixture(t, a, Options{URLBase: "http://10.42.0.1:8080/eph"})
	buildFixture(t, b, Options{URLBase: "http://10.42.0.1:8080/eph"})
	for _, f := range []string{KernelFile, InitrdFile, SumsFile, ImageFile} {
		x, err := os.ReadFile(filepath.Join(a, f))
		if err != nil {
			t.Fatal(err)
		}
		y, _ := os.ReadFile(filepath.Join(b, f))
		if !bytes.Equal(x, y) {
			t.Errorf("%s differs between two builds of the same inputs", f)
		}
	}
	// Another epoch changes the archive, and only through mtimes.
	c := t.TempDir()
	buildFixture(t, c, Options{URLBase: "http://10.42.0.1:8080/eph", Epoch: 1700000000})
	x, _ := os.ReadFile(filepath.Join(a, InitrdFile))
	y, _ := os.ReadFile(filepath.Join(c, InitrdFile))
	if bytes.Equal(x, y) {
		t.Error("SOURCE_DATE_EPOCH did not reach the archive's mtimes")
	}
}

func TestBuildContents(t *testing.T) {
	t.Parallel()
	out := t.TempDir()
	res := buildFixture(t, out, Options{})
	if !slices.Equal(res.Missing, []string{"no_such_nic"}) || !slices.Equal(res.Builtin, []string{"af_packet"}) {
		t.Errorf("missing %v builtin %v", res.Missing, res.Builtin)
	}

	gz, err := os.ReadFile(filepath.Join(out, InitrdFile))
	if err != nil {
		t.Fatal(err)
	}
	// gzip header: no name, no mtime (bytes 4..7), so nothing of the build
	// host or time leaks in.
	if gz[3]&0x08 != 0 || !bytes.Equal(gz[4:8], []byte{0, 0, 0, 0}) {
		t.Errorf("gzip header carries a name or mtime: % x", gz[:10])
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	var raw bytes.Buffer
	if _, err := raw.ReadFrom(zr); err != nil {
		t.Fatal(err)
	}
	ents, err := ReadCPIO(bytes.NewReader(raw.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Entry{}
	var names []string
	for _, e := range ents {
		got[e.Name] = e
		names = append(names, e.Name)
	}
	if !slices.IsSorted(names) {
		t.Errorf("entries not sorted: %v", names)
	}
	const md = "lib/modules/6.1.0-test/"
	want := []string{"dev", "dev/console", "etc", "etc/kiln", "etc/kiln/modules", "init", "lib", "lib/modules", "lib/modules/6.1.0-test",
		md + "kernel", md + "kernel/drivers", md + "kernel/drivers/net", md + "kernel/drivers/net/ethernet",
		md + "kernel/drivers/net/ethernet/intel", md + "kernel/drivers/net/ethernet/intel/e1000e",
		md + "kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko", md + "kernel/drivers/net/net_failover.ko",
		md + "kernel/drivers/net/virtio_net.ko", md + "kernel/drivers/pps", md + "kernel/drivers/pps/pps_core.ko",
		md + "kernel/drivers/ptp", md + "kernel/drivers/ptp/ptp.ko", md + "kernel/drivers/virtio",
		md + "kernel/drivers/virtio/virtio.ko", md + "kernel/drivers/virtio/virtio_pci.ko",
		md + "kernel/drivers/virtio/virtio_pci_modern_dev.ko", md + "kernel/drivers/virtio/virtio_ring.ko",
		md + "kernel/net", md + "kernel/net/core", md + "kernel/net/core/failover.ko",
		"proc", "run", "sys", "tmp"}
	if !slices.Equal(names, want) {
		t.Errorf("archive lists\n%s\nwant\n%s", strings.Join(names, "\n"), strings.Join(want, "\n"))
	}
	if c := got["dev/console"]; c.Mode != modeChar|0o600 || c.Major != 5 || c.Minor != 1 {
		t.Errorf("dev/console: mode %o dev %d,%d", c.Mode, c.Major, c.Minor)
	}
	if i := got["init"]; i.Mode != modeFile|0o755 || !bytes.Equal(i.Data, staticAgent(t)) {
		t.Errorf("init: mode %o, %d bytes", i.Mode, len(i.Data))
	}
	if tmp := got["tmp"]; tmp.Mode != modeDir|0o1777 {
		t.Errorf("tmp: mode %o", tmp.Mode)
	}
	// Compressed modules are carried plain.
	if d := got[md+"kernel/drivers/ptp/ptp.ko"].Data; string(d) != "fake kernel module ptp\n" {
		t.Errorf("ptp.ko (from .ko.xz) holds %q", d)
	}
	if d := got[md+"kernel/drivers/pps/pps_core.ko"].Data; string(d) != "fake kernel module pps_core\n" {
		t.Errorf("pps_core.ko (from .ko.zst) holds %q", d)
	}
	wantList := strings.Join([]string{
		"kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko",
		"kernel/drivers/virtio/virtio_pci_modern_dev.ko", "kernel/drivers/virtio/virtio_pci.ko",
		"kernel/net/core/failover.ko", "kernel/drivers/net/net_failover.ko", "kernel/drivers/net/virtio_net.ko",
		"kernel/drivers/pps/pps_core.ko", "kernel/drivers/ptp/ptp.ko",
		"kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko"}, "\n") + "\n"
	if l := string(got[ModulesList].Data); l != wantList {
		t.Errorf("%s:\n%s\nwant\n%s", ModulesList, l, wantList)
	}
	// Fixed owner, mtime and inode numbers in every header.
	for i, off := 1, 0; off < raw.Len(); i++ {
		h := raw.Bytes()[off:]
		field := func(n int) string { return string(h[6+8*n : 14+8*n]) }
		if field(1) == "00000000" && field(11) == "0000000b" { // the trailer
			break
		}
		if field(0) != hex8(i) || field(2) != "00000000" || field(3) != "00000000" || field(5) != "00000000" {
			t.Fatalf("entry %d: ino %s uid %s gid %s mtime %s", i, field(0), field(2), field(3), field(5))
		}
		off = nextHeader(t, raw.Bytes(), off)
	}

	// The Image document and SHA256SUMS agree with the files.
	doc, err := os.ReadFile(filepath.Join(out, ImageFile))
	if err != nil {
		t.Fatal(err)
	}
	var im spec.Image
	if err := yaml.Unmarshal(doc, &im); err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(out)
	kern, _ := os.ReadFile("testdata/boot/vmlinuz-6.1.0-test")
	if im.Kind != spec.KindImage || im.Spec.Purpose != spec.PurposeEphemeral || im.Spec.Initrd.SHA256 != sum(gz) ||
		im.Spec.Kernel.SHA256 != sum(kern) || im.Spec.Initrd.URL != "file://"+abs+"/"+InitrdFile ||
		im.Spec.Cmdline != DefaultCmdline || im.Metadata.Annotations["kiln.dev/kernel-release"] != "6.1.0-test" {
		t.Errorf("image.yaml:\n%s", doc)
	}
	sums, _ := os.ReadFile(filepath.Join(out, SumsFile))
	if want := sum(gz) + "  " + InitrdFile + "\n" + sum(kern) + "  " + KernelFile + "\n"; string(sums) != want {
		t.Errorf("SHA256SUMS:\n%s\nwant\n%s", sums, want)
	}
	// It is a valid inventory document.
	res2 := spec.Load(os.DirFS(out))
	if res2.Problems.Errors() > 0 || len(res2.Problems) > 0 || res2.Inventory.Images["kiln-ephemeral"] == nil {
		t.Errorf("image.yaml does not validate:\n%s", res2.Problems)
	}
}

func hex8(i int) string { return fmt.Sprintf("%08x", i) }

// nextHeader is the offset of the cpio header after the one at off.
func nextHeader(t *testing.T, raw []byte, off int) int {
	t.Helper()
	field := func(n int) int {
		v, err := strconv.ParseUint(string(raw[off+6+8*n:off+14+8*n]), 16, 32)
		if err != nil {
			t.Fatal(err)
		}
		return int(v)
	}
	return align4(align4(off+110+field(11)) + field(6))
}

func align4(n int) int { return (n + 3) &^ 3 }

func sum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func TestBuildRefuses(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dyn := filepath.Join(dir, "dynamic")
	os.WriteFile(dyn, fakeELF(t, elf.ET_EXEC, []elf.ProgType{elf.PT_LOAD, elf.PT_INTERP}, nil), 0o755)
	static := filepath.Join(dir, "static")
	os.WriteFile(static, staticAgent(t), 0o755)
	base := Options{Kernel: "testdata/boot/vmlinuz-6.1.0-test", Modules: fixture, Out: t.TempDir(), Name: "e"}
	for _, c := range []struct {
		name string
		edit func(*Options)
		err  string
	}{
		{"dynamic agent", func(o *Options) { o.Agent = dyn }, "dynamically linked: build it static, CGO_ENABLED=0"},
		{"agent for another arch", func(o *Options) { o.Agent, o.Arch = static, "arm64" }, "built for EM_X86_64, the image is arm64"},
		{"not an executable", func(o *Options) { o.Agent = "testdata/boot/vmlinuz-6.1.0-test" }, "not an executable"},
		{"required driver missing", func(o *Options) { o.Agent, o.Required = static, []string{"virtio_net", "no-such-nic"} },
			"kernel 6.1.0-test has no driver no_such_nic"},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := base
			c.edit(&o)
			if _, err := Build(o); err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("err = %v, want %q", err, c.err)
			}
		})
	}
}
