package rack

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// stageIPXE copies the iPXE binaries of a distribution's folder (e.g.
// /usr/lib/ipxe) into the folder TFTP serves. Distributions link some of
// them from elsewhere (Debian: ipxe.efi -> /boot/ipxe.efi), and the TFTP
// server rightly refuses links out of its root; copying once, from the
// folder the operator named, keeps that rule and still serves them.
func stageIPXE(src, dst string) (int, error) {
	entries, err := os.ReadDir(src)
	if err != nil {
		return 0, fmt.Errorf("iPXE folder: %w", err)
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return 0, fmt.Errorf("TFTP root: %w", err)
	}
	n := 0
	for _, e := range entries {
		name := e.Name()
		if !(strings.HasSuffix(name, ".efi") || strings.HasSuffix(name, ".kpxe") || strings.HasSuffix(name, ".pxe") || strings.HasSuffix(name, ".lkrn")) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, name)) // follows the distribution's links
		if err != nil {
			return n, fmt.Errorf("iPXE binary %s: %w", name, err)
		}
		tmp := filepath.Join(dst, "."+name+".tmp")
		if err := os.WriteFile(tmp, b, 0o644); err != nil {
			return n, err
		}
		if err := os.Rename(tmp, filepath.Join(dst, name)); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}
