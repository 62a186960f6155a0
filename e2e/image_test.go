//go:build e2e

package e2e

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/kilnhq/kiln/e2e/netlab"
	"github.com/kilnhq/kiln/spec/kilntest"
	"golang.org/x/sys/unix"
)

// The rack agent's OCI image, as `make image` writes it, unpacked and run
// the way the Helm chart's restricted pod runs it (podman cannot run
// here): its entrypoint as the image's user, with only NET_BIND_SERVICE
// and NET_RAW in the bounding set, no_new_privs, on a read-only root, in a
// network namespace. The capabilities it keeps come from the binary's file
// capabilities. A real DHCP client gets its reservation from it.
func TestRackImageUnprivileged(t *testing.T) {
	netlab.Require(t)
	netlab.RequireBinary(t, "dhclient")
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	static := filepath.Join(dir, "kiln")
	goRun(t, []string{"CGO_ENABLED=0"}, "build", "-trimpath", "-ldflags", "-s -w", "-o", static, "../cmd/kiln")
	goRun(t, nil, "run", "../cmd/kiln-oci", "--kiln", static, "--out", dir, "--tag", "e2e")
	runner := filepath.Join(dir, "kiln-imagerun")
	goRun(t, nil, "build", "-o", runner, "./cmd/kiln-imagerun")

	rootfs, user, entrypoint := unpackImage(t, filepath.Join(dir, "kiln-rack.oci.tar"), filepath.Join(dir, "rootfs"))
	if user != "65532:65532" || strings.Join(entrypoint, " ") != "/usr/local/bin/kiln rack" {
		t.Fatalf("image user %q entrypoint %q", user, entrypoint)
	}
	for _, shell := range []string{"bin/sh", "usr/bin/sh", "bin/bash"} {
		if _, err := os.Lstat(filepath.Join(rootfs, shell)); err == nil {
			t.Errorf("the image has a shell: /%s", shell)
		}
	}

	r := netlab.Rack(t)
	startKilnRack(t, r, "managed", 0)
	args := append([]string{runner, "--root", rootfs, "--user", user, "--caps", "net_bind_service,net_raw",
		"--tmpfs", "/tmp,/var/cache/kiln", "--"}, entrypoint...)
	args = append(args, "--rack", "r1", "--agent-id", "image", "--interfaces", r.Iface, "--listen", "127.0.0.1:9500",
		"--cache-dir", "/var/cache/kiln", "--tftp", ":69", "--http", ":8080")
	agent := r.Srv.StartCmd(netlab.Cmd{Name: "kiln-rack-image", Args: args})
	agent.Expect(`leading the rack`, 60*time.Second)

	l := netlab.Dhclient(r.Cli, r.Iface, netlab.ClientOpts{MAC: "52:54:00:00:00:11", NoAssign: true,
		VendorClass: "PXEClient:Arch:00000:UNDI:002001", ClientArch: netlab.Arch(0)}).Lease()
	if l.IP != addr("10.42.0.11") || l.Filename != "undionly.kpxe" {
		t.Fatalf("got %s (boot file %q) from the image's agent, want 10.42.0.11 and undionly.kpxe", l.IP, l.Filename)
	}

	// The agent is the runner's child: check what it holds.
	var pid string
	kilntest.Eventually(t, 10*time.Second, "the agent's pid", func() bool {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", agent.Pid(), agent.Pid()))
		pid = strings.TrimSpace(string(b))
		return pid != "" && !strings.Contains(pid, " ")
	})
	status, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Uid:\t65532\t65532\t65532\t65532", "Gid:\t65532\t65532\t65532\t65532",
		"CapPrm:\t0000000000002400", "CapEff:\t0000000000002400", "CapBnd:\t0000000000002400",
		// From the binary's file capabilities, not ambient ones (which an
		// exec of a file with capabilities clears), under no_new_privs.
		"CapAmb:\t0000000000000000", "NoNewPrivs:\t1"} {
		if !strings.Contains(string(status), want) {
			t.Errorf("agent's status lacks %q:\n%s", want, status)
		}
	}
	mounts, err := os.ReadFile("/proc/" + pid + "/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	rootRO := false
	for _, line := range strings.Split(string(mounts), "\n") {
		f := strings.Fields(line)
		if len(f) > 5 && f[4] == "/" {
			rootRO = strings.HasPrefix(f[5], "ro")
		}
	}
	if !rootRO {
		t.Errorf("the agent's root is not read-only:\n%s", mounts)
	}
	if strings.Contains(agent.Log(), "level=ERROR") {
		t.Errorf("the agent logged errors on a read-only root:\n%s", agent.Log())
	}
}

// goRun runs the go command in the e2e folder.
func goRun(t *testing.T, env []string, args ...string) {
	t.Helper()
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// unpackImage reads the OCI archive's only image with go-containerregistry
// and writes its flattened file system to root, owners and modes kept; it
// returns root, the image's user and its entrypoint followed by its
// command.
func unpackImage(t *testing.T, archive, root string) (string, string, []string) {
	t.Helper()
	oci := filepath.Join(filepath.Dir(root), "oci")
	untar(t, archive, oci)
	idx, err := layout.ImageIndexFromPath(oci)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil || len(im.Manifests) != 1 {
		t.Fatalf("index: %v, %d manifests", err, len(im.Manifests))
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	if err := extract(tar.NewReader(rc), root); err != nil {
		t.Fatal(err)
	}
	return root, cf.Config.User, append(cf.Config.Entrypoint, cf.Config.Cmd...)
}

func untar(t *testing.T, archive, to string) {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := extract(tar.NewReader(f), to); err != nil {
		t.Fatal(err)
	}
}

// extract writes a tar stream's directories and regular files under root;
// anything else, or a name leaving root, is an error.
func extract(tr *tar.Reader, root string) error {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		name := filepath.Join(root, filepath.Clean("/"+h.Name))
		mode := os.FileMode(h.Mode & 0o7777)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(name, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			f, err := os.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: unexpected tar entry type %c", h.Name, h.Typeflag)
		}
		if err := os.Chmod(name, mode); err != nil {
			return err
		}
		if err := os.Lchown(name, h.Uid, h.Gid); err != nil {
			return err
		}
		// File capabilities, as containerd applies them (after chown,
		// which clears them).
		if caps, ok := h.PAXRecords["SCHILY.xattr.security.capability"]; ok {
			if err := unix.Setxattr(name, "security.capability", []byte(caps), 0); err != nil {
				return fmt.Errorf("%s: file capabilities: %w", h.Name, err)
			}
		}
	}
}
