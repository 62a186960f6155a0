package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoServerDependencies keeps the static agent small: it runs in every
// initramfs and must link no etcd, gRPC or zap package. Protocol types it
// shares with the boot server belong in spec/agentapi, not in a package
// that imports inventory.
func TestNoServerDependencies(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go is not on PATH")
	}
	out, err := exec.Command(goBin, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		for _, banned := range []string{"go.etcd.io/", "google.golang.org/grpc", "go.uber.org/zap"} {
			if strings.HasPrefix(pkg, banned) {
				t.Errorf("kiln-agent links %s; keep server packages out of the agent's imports", pkg)
			}
		}
	}
}
