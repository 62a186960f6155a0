package netlab

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestTinyBoots(t *testing.T) {
	console := "SeaBIOS\r\n\x1b[2JTINYOS-BOOT label=tiny-1 id=a1\r\n" +
		"TINYOS-UP label=tiny-1 id=a1 uptime=2.20\r\nTINYOS-UP label=tiny-1 id=a1 uptime=5.22\r\n" +
		"reboot\r\nTINYOS-BOOT label=tiny-2 id=b2\r\nTINYOS-UP label=tiny-2 id=b2 uptime=1.5\r\n"
	b := TinyBoots(console)
	want := []TinyBoot{{"tiny-1", "a1", 5.22}, {"tiny-2", "b2", 1.5}}
	if len(b) != len(want) || b[0] != want[0] || b[1] != want[1] {
		t.Errorf("TinyBoots = %+v, want %+v", b, want)
	}
	// A console that starts after the banner (the same boot, uptime only).
	if b := TinyBoots("TINYOS-UP label=tiny-1 id=c3 uptime=9.00\n"); len(b) != 1 || b[0].ID != "c3" || b[0].Uptime != 9 {
		t.Errorf("uptime only: %+v", b)
	}
}

// The image: syslinux's GPT boot code in the MBR, a legacy-bootable
// ESP holding syslinux, the kernel and an initramfs whose /init prints
// the label. (Booting it is TestLabFleet's, under QEMU.)
func TestBuildTinyOS(t *testing.T) {
	im := BuildTinyOS(t, t.TempDir(), "tiny-x")
	if im.Name != "tiny-x" || im.Confirm != "none" || len(im.SHA256) != 64 {
		t.Errorf("image %+v", im)
	}
	disk, err := os.ReadFile(im.Path)
	if err != nil {
		t.Fatal(err)
	}
	mbr, err := os.ReadFile(gptMBR)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(disk[:440], mbr[:440]) || string(disk[512:520]) != "EFI PART" {
		t.Errorf("the disk lacks gptmbr.bin or a GPT header")
	}
	out, err := exec.Command("sgdisk", "-i", "1", im.Path).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Attribute flags: 0000000000000004") { // bit 2: legacy BIOS bootable
		t.Errorf("partition 1 is not legacy-bootable: %v\n%s", err, out)
	}
	out, err = exec.Command("mdir", "-a", "-b", "-i", im.Path+"@@1M", "::/", "::/syslinux").CombinedOutput()
	for _, f := range []string{"::/vmlinuz", "::/initrd.img", "::/syslinux/ldlinux.sys", "::/syslinux/syslinux.cfg"} {
		if err != nil || !strings.Contains(string(out), f) {
			t.Errorf("the ESP lacks %s: %v\n%s", f, err, out)
		}
	}
}
