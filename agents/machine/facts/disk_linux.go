package facts

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/kilnhq/kiln/spec/agentapi"
)

// DiskCollector lists whole disks from /sys/block.
type DiskCollector struct{ Roots Roots }

// Name implements Collector.
func (DiskCollector) Name() string { return "disks" }

// Collect implements Collector.
func (c DiskCollector) Collect(_ context.Context, f *agentapi.Facts) error {
	disks, err := Disks(c.Roots)
	if err != nil {
		return err
	}
	f.Disks = disks
	return nil
}

// skipDisk are the kernel name prefixes of block devices that are not
// disks an OS can be written to.
var skipDisk = []string{"loop", "ram", "zram", "sr", "dm-", "md", "fd", "nbd"}

// Disks lists the whole disks under roots.Sys/block, sorted by name.
func Disks(roots Roots) ([]agentapi.Disk, error) {
	dir := filepath.Join(roots.Sys, "block")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list disks: %w", err)
	}
	byPath := udevByPath(roots.Dev)
	disks := []agentapi.Disk{}
	for _, e := range ents {
		name := e.Name()
		if skipName(name) {
			continue
		}
		b := filepath.Join(dir, name)
		sectors, ok := readInt(filepath.Join(b, "size"))
		if !ok || sectors == 0 {
			continue // empty card readers and the like
		}
		d := agentapi.Disk{
			Name:       name,
			Path:       filepath.Join(roots.Dev, name),
			SizeBytes:  sectors * 512, // sysfs counts 512-byte sectors whatever the device's block size
			Model:      readTrim(filepath.Join(b, "device", "model")),
			Vendor:     readTrim(filepath.Join(b, "device", "vendor")),
			Serial:     diskSerial(b),
			WWID:       firstOf(readTrim(filepath.Join(b, "wwid")), readTrim(filepath.Join(b, "device", "wwid"))),
			Rotational: readTrim(filepath.Join(b, "queue", "rotational")) == "1",
			Removable:  readTrim(filepath.Join(b, "removable")) == "1",
			ByPath:     byPath[name],
		}
		if n, ok := readInt(filepath.Join(b, "queue", "logical_block_size")); ok {
			d.LogicalBlockSize = n
		}
		if d.ByPath == "" {
			if target, err := os.Readlink(b); err == nil {
				d.ByPath = pathID(target, name, readTrim(filepath.Join(b, "nsid")))
			}
		}
		disks = append(disks, d)
	}
	sort.Slice(disks, func(i, j int) bool { return disks[i].Name < disks[j].Name })
	return disks, nil
}

func skipName(name string) bool {
	for _, p := range skipDisk {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

func firstOf(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// diskSerial is the disk's serial number: device/serial (NVMe, some SCSI),
// serial (virtio-blk), or the unit serial number VPD page (SCSI, and ATA
// through libata).
func diskSerial(b string) string {
	if s := firstOf(readTrim(filepath.Join(b, "device", "serial")), readTrim(filepath.Join(b, "serial"))); s != "" {
		return s
	}
	pg, err := os.ReadFile(filepath.Join(b, "device", "vpd_pg80"))
	if err != nil || len(pg) < 4 || pg[1] != 0x80 {
		return ""
	}
	n := int(pg[2])<<8 | int(pg[3])
	pg = pg[4:]
	if n < len(pg) {
		pg = pg[:n]
	}
	return strings.Trim(string(pg), " \x00\t\n")
}

// udevByPath maps kernel disk names to their /dev/disk/by-path names, when
// udev made them. Of several names for one disk the shortest wins.
func udevByPath(dev string) map[string]string {
	m := map[string]string{}
	dir := filepath.Join(dev, "disk", "by-path")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return m
	}
	for _, e := range ents {
		t, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil || strings.Contains(e.Name(), "-part") {
			continue
		}
		k := filepath.Base(t)
		if old, ok := m[k]; !ok || len(e.Name()) < len(old) || len(e.Name()) == len(old) && e.Name() < old {
			m[k] = e.Name()
		}
	}
	return m
}

var (
	pciAddr = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$`)
	scsiID  = regexp.MustCompile(`^[0-9]+:([0-9]+:[0-9]+:[0-9]+)$`)
	ataPort = regexp.MustCompile(`^ata([0-9]+)$`)
)

// lastPCI is the last PCI address in a sysfs device path: the device
// itself or the controller a virtio/SCSI/ATA device hangs off.
func lastPCI(target string) (string, int) {
	parts := strings.Split(target, "/")
	for i := len(parts) - 1; i >= 0; i-- {
		if pciAddr.MatchString(parts[i]) {
			return parts[i], i
		}
	}
	return "", -1
}

// pathID computes a /dev/disk/by-path name from the disk's sysfs device
// path (the target of /sys/block/<name>) as udev's path_id would, for
// disks on PCI: virtio-blk (pci-X), NVMe (pci-X-nvme-N), ATA (pci-X-ata-N,
// the name older and newer udev both make) and SCSI (pci-X-scsi-0:C:T:L,
// assuming one host per adapter). Anything else (USB, no PCI) is "".
func pathID(target, name, nsid string) string {
	pci, i := lastPCI(target)
	if pci == "" {
		return ""
	}
	id := "pci-" + pci
	for _, p := range strings.Split(target, "/")[i+1:] {
		switch {
		case strings.HasPrefix(p, "usb"):
			return ""
		case p == "nvme":
			if nsid == "" {
				if _, n, ok := strings.Cut(strings.TrimPrefix(name, "nvme"), "n"); ok {
					nsid = n
				}
			}
			return id + "-nvme-" + nsid
		case ataPort.MatchString(p):
			return id + "-ata-" + ataPort.FindStringSubmatch(p)[1]
		case scsiID.MatchString(p):
			return id + "-scsi-0:" + scsiID.FindStringSubmatch(p)[1]
		}
	}
	return id
}
