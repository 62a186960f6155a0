package netlab

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/agents/machine/initramfs"
)

// A tiny bootable OS for the lab's VMs, built in seconds from what the
// machine has (Debian's kernel that .ci/run keeps, busybox-static,
// syslinux, mtools, gdisk), for tests that deploy, adopt and redeploy
// often and need no cloud-init: an Image with confirm: none.
//
// Its init never mounts or writes the disk. It prints, on the serial
// console (ttyS0), a banner once per boot with a random boot id, then its
// uptime every few seconds:
//
//	TINYOS-BOOT label=tiny-1 id=3f0c…
//	TINYOS-UP label=tiny-1 id=3f0c… uptime=12.34
//
// Disk layout, like e2e/osimage/build-debian.sh's (GPT, so that Kiln's
// agent can append its CIDATA partition): syslinux gptmbr.bin in the MBR,
// one FAT16 partition with the legacy-BIOS-bootable attribute holding
// syslinux, /vmlinuz and /initrd.img. BIOS only.

// TinyOSBanner and TinyOSUptime start the lines the tiny OS prints.
const (
	TinyOSBanner = "TINYOS-BOOT"
	TinyOSUptime = "TINYOS-UP"
)

// TinyOSKernel is the kernel the tiny OS boots: Debian's, which
// e2e/deps.sh keeps in KernelDebCache.
const TinyOSKernel = KernelDebCache + "/vmlinuz"

// tinyOSTools are what BuildTinyOS runs and reads.
var tinyOSTools = []tool{
	{"busybox", "busybox-static"},
	{"mkfs.vfat", "dosfstools"},
	{"mcopy", "mtools"},
	{"mmd", "mtools"},
	{"syslinux", "syslinux"},
	{gptMBR, "syslinux-common"},
	{"sgdisk", "gdisk"},
	{TinyOSKernel, "linux-image-amd64 (e2e/deps.sh keeps it there)"},
}

// gptMBR is syslinux's MBR boot code for a GPT disk.
const gptMBR = "/usr/lib/SYSLINUX/gptmbr.bin"

// BuildTinyOS builds the tiny OS disk image labelled label (the label is
// in its banner, so that two builds with different labels differ) into
// dir/<label>.raw and returns an OSImage for it (confirm: none). It skips
// the test when a tool or the kernel is missing (fails it under CI=true).
func BuildTinyOS(t testing.TB, dir, label string) OSImage {
	t.Helper()
	requireTools(t, "the tiny OS", tinyOSTools)
	start := time.Now()
	work, err := os.MkdirTemp(dir, "tinyos-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(work)
	initrd := filepath.Join(work, "initrd.img")
	if err := writeTinyInitrd(initrd, label); err != nil {
		t.Fatalf("netlab: tiny OS: %v", err)
	}
	disk := filepath.Join(dir, label+".raw")
	if err := tinyDisk(work, disk, initrd); err != nil {
		t.Fatalf("netlab: tiny OS: %v", err)
	}
	sum, err := FileSHA256(disk)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("netlab: built the tiny OS %s in %s (%s)", label, time.Since(start).Round(10*time.Millisecond), disk)
	return OSImage{Name: label, Path: disk, SHA256: sum, Confirm: "none"}
}

// tinyInit is the tiny OS's /init. $LABEL is replaced at build time.
const tinyInit = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
id=$(cat /proc/sys/kernel/random/uuid)
echo "` + TinyOSBanner + ` label=$LABEL id=$id"
while :; do
	echo "` + TinyOSUptime + ` label=$LABEL id=$id uptime=$(cut -d' ' -f1 /proc/uptime)"
	sleep 3
done
`

// writeTinyInitrd writes the gzipped cpio: /init, a static busybox,
// /dev/console (the kernel mounts no devtmpfs before init).
func writeTinyInitrd(path, label string) error {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return err
	}
	bin, err := os.ReadFile(bb)
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(bin, []byte("\x7fELF")) || bytes.Contains(bin, []byte("/lib64/ld-linux")) {
		return fmt.Errorf("%s is not a static ELF binary (apt-get install busybox-static)", bb)
	}
	a := initramfs.NewArchive()
	for _, d := range []string{"bin", "dev", "proc", "sys"} {
		a.Dir(d, 0o755)
	}
	a.CharDev("dev/console", 0o600, 5, 1)
	a.File("bin/busybox", 0o755, bin)
	a.File("init", 0o755, []byte(strings.ReplaceAll(tinyInit, "$LABEL", label)))
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	zw := gzip.NewWriter(f)
	_, err = a.WriteTo(zw, 0)
	if cerr := zw.Close(); err == nil {
		err = cerr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

const tinySyslinuxCfg = `SERIAL 0 115200
PROMPT 0
TIMEOUT 0
DEFAULT tiny
LABEL tiny
	LINUX /vmlinuz
	INITRD /initrd.img
	APPEND console=ttyS0,115200n8 quiet panic=-1
`

// tinyDisk makes the ESP in work and the disk image at disk.
func tinyDisk(work, disk, initrd string) error {
	cfg := filepath.Join(work, "syslinux.cfg")
	if err := os.WriteFile(cfg, []byte(tinySyslinuxCfg), 0o644); err != nil {
		return err
	}
	const espMiB = 16 // kernel ~8 MiB, initrd ~1 MiB, syslinux
	esp := filepath.Join(work, "esp.img")
	steps := [][]string{
		{"truncate", "-s", strconv.Itoa(espMiB) + "M", esp},
		{"mkfs.vfat", "-F", "16", "-n", "TINYOS", esp},
		{"mmd", "-i", esp, "::/syslinux"},
		{"syslinux", "--install", "--directory", "/syslinux", esp},
		{"mcopy", "-i", esp, cfg, "::/syslinux/syslinux.cfg"},
		{"mcopy", "-i", esp, TinyOSKernel, "::/vmlinuz"},
		{"mcopy", "-i", esp, initrd, "::/initrd.img"},
		{"rm", "-f", disk},
		{"truncate", "-s", strconv.Itoa(1+espMiB+1) + "M", disk},
		{"sgdisk", "-a", "2048", "-n", "1:1M:+" + strconv.Itoa(espMiB) + "M", "-t", "1:ef00", "-c", "1:ESP", "-A", "1:set:2", disk},
		{"dd", "if=" + gptMBR, "of=" + disk, "bs=440", "count=1", "conv=notrunc", "status=none"},
		{"dd", "if=" + esp, "of=" + disk, "bs=1M", "seek=1", "conv=notrunc", "status=none"},
	}
	for _, s := range steps {
		if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(s, " "), err, out)
		}
	}
	return nil
}

// FileSHA256 returns the hex sha256 of a file's content.
func FileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// TinyBoot is one boot of the tiny OS as its console shows it.
type TinyBoot struct {
	Label, ID string
	Uptime    float64 // the last uptime printed, in seconds; 0 before the first
}

var tinyLine = regexp.MustCompile(`(` + TinyOSBanner + `|` + TinyOSUptime + `) label=(\S+) id=(\S+)(?: uptime=([0-9.]+))?`)

// TinyBoots parses a console: the tiny OS's boots in order, each with the
// last uptime it printed.
func TinyBoots(console string) []TinyBoot {
	var boots []TinyBoot
	for _, m := range tinyLine.FindAllStringSubmatch(console, -1) {
		if m[1] == TinyOSBanner || len(boots) == 0 || boots[len(boots)-1].ID != m[3] {
			boots = append(boots, TinyBoot{Label: m[2], ID: m[3]})
		}
		if m[4] != "" {
			boots[len(boots)-1].Uptime, _ = strconv.ParseFloat(m[4], 64)
		}
	}
	return boots
}
