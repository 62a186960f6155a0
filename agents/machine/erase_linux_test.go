package machine

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestEraseSecureLoop discards a loop device (which supports BLKDISCARD,
// not BLKSECDISCARD): the erase says which one it used, and the backing
// file reads as zeros.
func TestEraseSecureLoop(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a loop device")
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("no losetup")
	}
	disk := dirtyDisk(t, gptImage(t), 9<<20)
	out, err := exec.Command("losetup", "--find", "--show", disk.Path).CombinedOutput()
	if err != nil {
		t.Skipf("losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	loop := disk
	loop.Path = dev
	how, err := (&Eraser{Log: testLogger(t)}).Erase(context.Background(), loop, EraseSecure)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(how, "discard") {
		t.Errorf("secure erase says %q", how)
	}
	got, err := os.ReadFile(disk.Path)
	if err != nil {
		t.Fatal(err)
	}
	if !isZero(got) {
		t.Error("backing file not all zeros after the discard")
	}
}
