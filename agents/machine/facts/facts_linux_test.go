package facts

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/kilnhq/kiln/spec/agentapi"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func fixtureRoots() Roots {
	return Roots{Sys: "testdata/sys", Proc: "testdata/proc", Dev: "testdata/dev"}
}

// TestCollectFixture runs every collector but LLDP over the fixture tree
// and compares the facts with testdata/facts.golden.json.
func TestCollectFixture(t *testing.T) {
	t.Parallel()
	roots := fixtureRoots()
	var cs []Collector
	for _, c := range Default(roots, 0, nil) {
		if c.Name() != "lldp" {
			cs = append(cs, c)
		}
	}
	f := Collect(context.Background(), slog.New(slog.NewTextHandler(io.Discard, nil)), "amd64", cs)
	got, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	golden := filepath.Join("testdata", "facts.golden.json")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to write it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("facts differ from %s (go test -update rewrites it):\n%s", golden, got)
	}
	// The golden file is checked by eye once; these are the facts the
	// fixture was built for, so a wrong -update cannot hide them.
	if f.CPU.Count != 3 || f.CPU.Sockets != 2 || f.CPU.Model != "Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz" {
		t.Errorf("cpu = %+v", f.CPU)
	}
	if f.Memory.TotalBytes != 2014136*1024 {
		t.Errorf("memory = %d", f.Memory.TotalBytes)
	}
	if f.DMI.Vendor != "QEMU" || f.DMI.Serial != "KILN-VM-2" || f.DMI.UUID != "6a1f9c2e-58d1-4b5e-9d1c-2f0e4a7b9c11" {
		t.Errorf("dmi = %+v", f.DMI)
	}
	wantDisks := map[string]agentapi.Disk{
		"nvme0n1": {Name: "nvme0n1", Path: "testdata/dev/nvme0n1", SizeBytes: 3907029168 * 512, Model: "Samsung SSD 980 PRO 2TB",
			Serial: "S6B0NL0T123456X", WWID: "eui.0025388b91b0e1a2", ByPath: "pci-0000:00:05.0-nvme-1", LogicalBlockSize: 4096},
		"sda": {Name: "sda", Path: "testdata/dev/sda", SizeBytes: 976773168 * 512, Model: "WDC WD5000AAKX-0", Vendor: "ATA",
			Serial: "WD-WCAYUS123456", WWID: "naa.50014ee2b5a1c3d4", Rotational: true, ByPath: "pci-0000:00:1f.2-ata-1.0", LogicalBlockSize: 512},
		"vda": {Name: "vda", Path: "testdata/dev/vda", SizeBytes: 20971520 * 512, Serial: "KILN-VDA", Rotational: true,
			ByPath: "pci-0000:00:04.0", LogicalBlockSize: 512},
	}
	if len(f.Disks) != len(wantDisks) {
		t.Errorf("disks: got %d (%+v), want %d", len(f.Disks), f.Disks, len(wantDisks))
	}
	for _, d := range f.Disks {
		if d != wantDisks[d.Name] {
			t.Errorf("disk %s:\n got %+v\nwant %+v", d.Name, d, wantDisks[d.Name])
		}
	}
	wantNICs := []agentapi.NIC{
		{Name: "eno1", MAC: "3c:ec:ef:00:11:22", Driver: "e1000e", PCI: "0000:00:06.0", SpeedMbps: 1000, MTU: 9000, OperState: "down"},
		{Name: "eth0", MAC: "52:54:00:42:00:02", Driver: "virtio_net", PCI: "0000:00:03.0", MTU: 1500, OperState: "up", Carrier: true},
	}
	if len(f.NICs) != len(wantNICs) {
		t.Fatalf("nics = %+v", f.NICs)
	}
	for i := range wantNICs {
		if f.NICs[i] != wantNICs[i] {
			t.Errorf("nic %d:\n got %+v\nwant %+v", i, f.NICs[i], wantNICs[i])
		}
	}
	if len(f.Errors) != 0 {
		t.Errorf("errors: %v", f.Errors)
	}
}

func TestCollectReportsFailedCollectors(t *testing.T) {
	t.Parallel()
	empty := t.TempDir()
	roots := Roots{Sys: empty, Proc: empty, Dev: empty}
	f := Collect(context.Background(), slog.New(slog.NewTextHandler(io.Discard, nil)), "amd64",
		[]Collector{CPUCollector{Proc: roots.Proc}, MemoryCollector{Proc: roots.Proc}, DMICollector{Sys: roots.Sys}, DiskCollector{Roots: roots}})
	if len(f.Errors) != 3 { // DMI is optional
		t.Fatalf("errors = %q, want cpu, memory and disks", f.Errors)
	}
	for i, prefix := range []string{"cpu: ", "memory: ", "disks: "} {
		if len(f.Errors[i]) < len(prefix) || f.Errors[i][:len(prefix)] != prefix {
			t.Errorf("error %d = %q, want prefix %q", i, f.Errors[i], prefix)
		}
	}
}

func TestPathID(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct{ target, disk, nsid, want string }{
		"virtio":      {"../devices/pci0000:00/0000:00:04.0/virtio1/block/vda", "vda", "", "pci-0000:00:04.0"},
		"nvme nsid":   {"../devices/pci0000:00/0000:00:1d.0/0000:3b:00.0/nvme/nvme0/nvme0n2", "nvme0n2", "2", "pci-0000:3b:00.0-nvme-2"},
		"nvme name":   {"../devices/pci0000:00/0000:00:05.0/nvme/nvme1/nvme1n1", "nvme1n1", "", "pci-0000:00:05.0-nvme-1"},
		"ata":         {"../devices/pci0000:00/0000:00:1f.2/ata3/host2/target2:0:0/2:0:0:0/block/sdc", "sdc", "", "pci-0000:00:1f.2-ata-3"},
		"virtio-scsi": {"../devices/pci0000:00/0000:00:05.0/virtio2/host2/target2:0:1:0/2:0:1:0/block/sda", "sda", "", "pci-0000:00:05.0-scsi-0:0:1:0"},
		"usb":         {"../devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb", "sdb", "", ""},
		"no pci":      {"../devices/platform/soc/fe340000.mmc/mmc_host/mmc0/mmc0:0001/block/mmcblk0", "mmcblk0", "", ""},
	} {
		if got := pathID(tc.target, tc.disk, tc.nsid); got != tc.want {
			t.Errorf("%s: pathID = %q, want %q", name, got, tc.want)
		}
	}
}
