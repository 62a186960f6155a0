package rack

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
)

// Debian links ipxe.efi from /boot; staging copies it as a regular file
// so the TFTP root holds no link out of itself.
func TestStageIPXEResolvesDistributionLinks(t *testing.T) {
	src, elsewhere, dst := t.TempDir(), t.TempDir(), filepath.Join(t.TempDir(), "tftp")
	os.WriteFile(filepath.Join(src, "undionly.kpxe"), []byte("bios"), 0o644)
	os.WriteFile(filepath.Join(elsewhere, "ipxe.efi"), []byte("uefi"), 0o644)
	if err := os.Symlink(filepath.Join(elsewhere, "ipxe.efi"), filepath.Join(src, "ipxe.efi")); err != nil {
		t.Skip(err)
	}
	os.WriteFile(filepath.Join(src, "README"), []byte("not a boot file"), 0o644)
	n, err := stageIPXE(src, dst)
	if err != nil || n != 2 {
		t.Fatalf("staged %d: %v", n, err)
	}
	for name, want := range map[string]string{"undionly.kpxe": "bios", "ipxe.efi": "uefi"} {
		fi, err := os.Lstat(filepath.Join(dst, name))
		if err != nil || !fi.Mode().IsRegular() {
			t.Fatalf("%s: %v %v", name, fi, err)
		}
		if b, _ := os.ReadFile(filepath.Join(dst, name)); string(b) != want {
			t.Fatalf("%s holds %q", name, b)
		}
	}
	if _, err := os.Stat(filepath.Join(dst, "README")); err == nil {
		t.Fatal("non-boot files are not staged")
	}
	if _, err := stageIPXE(filepath.Join(src, "missing"), dst); err == nil {
		t.Fatal("a missing iPXE folder must be an error")
	}
}

func sha(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
