package netlab

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// OSImageCache is where DebianImage keeps the images it builds, one
// directory per version of the build script.
const OSImageCache = "/var/cache/kiln-e2e"

// tool is a binary (or a file, when absolute) a test needs, and the
// Debian package that ships it.
type tool struct{ name, pkg string }

// osImageTools are what e2e/osimage/build-debian.sh runs.
var osImageTools = []tool{
	{"mmdebstrap", "mmdebstrap"},
	{"mkfs.vfat", "dosfstools"},
	{"mcopy", "mtools"},
	{"syslinux", "syslinux"},
	{"/usr/lib/SYSLINUX/gptmbr.bin", "syslinux-common"},
	{"grub-mkstandalone", "grub-common"},
	{"/usr/lib/grub/x86_64-efi/linux.mod", "grub-efi-amd64-bin"},
	{"sgdisk", "gdisk"},
	{"mke2fs", "e2fsprogs"},
	{"zstd", "zstd"},
}

var verifiedImages sync.Map // directory -> sha256, checked once per process

// DebianImage returns a minimal Debian 12 disk image for Kiln to deploy
// (debian-12.raw.zst, format raw.zst, ESP + ext4 root, boots on BIOS and
// UEFI, cloud-init reading only NoCloud; see e2e/osimage/build-debian.sh)
// and the sha256 of that file as served.
//
// The image is built once per version of the build script, into
// OSImageCache/debian-<first 12 hex digits of the script's sha256>, which
// takes 3 to 9 minutes on 2 cores and needs Debian's apt sources. A build
// runs in a temporary directory beside it, renamed into place when
// complete, so a killed build never leaves a partial image; a lock file
// keeps two test binaries from building at once. The test is skipped when
// not root or when a tool the build needs is missing (under CI=true a
// missing tool fails the test instead, as RequireBinary does).
func DebianImage(t testing.TB) (path, sha256 string) {
	t.Helper()
	script, hash, err := osImageScript()
	if err != nil {
		t.Fatalf("netlab: Debian image: %v", err)
	}
	dir := filepath.Join(OSImageCache, "debian-"+hash)
	if p, sum, err := cachedImage(dir); err == nil {
		return p, sum
	}

	if os.Geteuid() != 0 {
		t.Skip("netlab: building the Debian OS image needs root (mmdebstrap --mode=root); run the e2e suite as root (make e2e)")
	}
	requireOSImageTools(t)
	lock := lockImageBuild(t, dir)
	defer lock.Close() // releases the lock
	// It may have been built while we waited.
	if p, sum, ok := reuseOrClear(t, dir); ok {
		return p, sum
	}
	start := time.Now()
	tmp, built := buildImage(t, script, dir, lock)
	if err := os.Rename(tmp, dir); err != nil {
		removeBuildDir(t, tmp)
		t.Fatalf("netlab: Debian image: %v", err)
	}
	verifiedImages.Delete(tmp)
	verifiedImages.Store(dir, built)
	p, sum, err := cachedImage(dir)
	if err != nil {
		t.Fatalf("netlab: Debian image: %v", err)
	}
	t.Logf("netlab: built the Debian image in %s: %s (sha256 %s)", time.Since(start).Round(time.Second), p, sum)
	return p, sum
}

// lockImageBuild takes the lock that keeps two processes from building
// the image into dir at once, waiting for it if need be; closing the file
// releases it.
func lockImageBuild(t testing.TB, dir string) *os.File {
	t.Helper()
	if err := os.MkdirAll(OSImageCache, 0o755); err != nil {
		t.Fatalf("netlab: Debian image: %v", err)
	}
	lock, err := os.OpenFile(dir+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatalf("netlab: Debian image: %v", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Logf("netlab: another process is building the Debian image in %s; waiting", OSImageCache)
		if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
			lock.Close()
			t.Fatalf("netlab: Debian image: lock %s: %v", lock.Name(), err)
		}
	}
	return lock
}

// reuseOrClear returns the image in dir if it is usable; otherwise it
// removes dir and whatever killed builds left behind. The build lock is
// held, so no build is running.
func reuseOrClear(t testing.TB, dir string) (path, sha256 string, ok bool) {
	t.Helper()
	if p, sum, err := cachedImage(dir); err == nil {
		return p, sum, true
	} else if !errors.Is(err, os.ErrNotExist) {
		t.Logf("netlab: rebuilding the Debian image: %v", err)
		if err := os.RemoveAll(dir); err != nil {
			t.Fatalf("netlab: Debian image: %v", err)
		}
	}
	old, _ := filepath.Glob(dir + ".tmp-*")
	for _, o := range old {
		removeBuildDir(t, o)
	}
	return "", "", false
}

// buildImage runs the build script into a temporary directory beside dir
// and returns that directory, holding a checked image, and the image's
// sha256. The child inherits lock.
func buildImage(t testing.TB, script, dir string, lock *os.File) (tmp, sha256 string) {
	t.Helper()
	tmp, err := os.MkdirTemp(OSImageCache, filepath.Base(dir)+".tmp-")
	if err == nil {
		err = os.Chmod(tmp, 0o755) // servers in tests may run as another user
	}
	if err != nil {
		t.Fatalf("netlab: Debian image: %v", err)
	}
	logPath := dir + ".log"
	logf, err := os.Create(logPath)
	if err != nil {
		os.RemoveAll(tmp)
		t.Fatalf("netlab: Debian image: %v", err)
	}
	defer logf.Close()
	t.Logf("netlab: building the Debian 12 OS image into %s (3 to 9 minutes; log in %s)", dir, logPath)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", script, tmp)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so that a timeout kills mmdebstrap and all;
	// and the lock file inherited, so that the lock stays held while any
	// part of the build lives on should this process die.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.ExtraFiles = []*os.File{lock}
	if err := cmd.Run(); err != nil {
		removeBuildDir(t, tmp)
		t.Fatalf("netlab: building the Debian image (bash %s %s) failed after %s: %v\n%s",
			script, tmp, time.Since(start).Round(time.Second), err, tailLines(logPath, 40))
	}
	_, built, err := cachedImage(tmp)
	if err != nil {
		removeBuildDir(t, tmp)
		t.Fatalf("netlab: the Debian image build made no usable image: %v\n%s", err, tailLines(logPath, 40))
	}
	return tmp, built
}

// removeBuildDir removes a build's temporary directory unless something is
// mounted below it. The script runs mmdebstrap in a mount namespace of its
// own, so its bind mounts of /dev, /proc and /sys into the chroot never
// show here; this is the guard should that ever change, since removing
// through a bind mount of /dev would delete the host's device nodes.
func removeBuildDir(t testing.TB, dir string) {
	t.Helper()
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4]+"/", dir+"/") {
				t.Logf("netlab: not removing %s: %s is mounted below it", dir, f[4])
				return
			}
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Logf("netlab: removing %s: %v", dir, err)
	}
}

// osImageScript returns the build script's path, found beside this source
// file, and the first 12 hex digits of its sha256.
func osImageScript() (path, hash string, err error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", "", errors.New("cannot locate netlab's source directory")
	}
	path = filepath.Join(filepath.Dir(file), "..", "osimage", "build-debian.sh")
	b, err := os.ReadFile(path)
	if err != nil {
		return "", "", fmt.Errorf("build script: %w", err)
	}
	sum := sha256.Sum256(b)
	return path, hex.EncodeToString(sum[:])[:12], nil
}

// cachedImage returns the image in dir and its sha256 from image.env after
// checking (once per process) that the file has that size and sha256. The
// error wraps os.ErrNotExist when dir holds no image.
func cachedImage(dir string) (path, sum string, err error) {
	env, err := readEnvFile(filepath.Join(dir, "image.env"))
	if err != nil {
		return "", "", err
	}
	name, sum := env["IMAGE"], strings.ToLower(env["SHA256"])
	size, serr := strconv.ParseInt(env["SIZE"], 10, 64)
	if name == "" || len(sum) != 64 || serr != nil {
		return "", "", fmt.Errorf("%s/image.env lacks IMAGE, SHA256 or SIZE", dir)
	}
	path = filepath.Join(dir, name)
	if v, ok := verifiedImages.Load(dir); ok && v == sum {
		return path, sum, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return "", "", fmt.Errorf("image.env names a missing image: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", "", fmt.Errorf("read %s: %w", path, err)
	}
	if n != size || hex.EncodeToString(h.Sum(nil)) != sum {
		return "", "", fmt.Errorf("%s does not match its image.env (size %d, sha256 %s)", path, size, sum)
	}
	verifiedImages.Store(dir, sum)
	return path, sum, nil
}

// readEnvFile reads KEY=value lines.
func readEnvFile(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	env := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if ok && !strings.HasPrefix(k, "#") {
			env[k] = strings.Trim(v, `"'`)
		}
	}
	return env, nil
}

// requireOSImageTools skips (fails under CI=true) when a tool the image
// build needs is missing, naming its Debian package.
func requireOSImageTools(t testing.TB) {
	t.Helper()
	requireTools(t, "building the Debian OS image", osImageTools)
}

// requireTools skips the test (fails it under CI=true) when one of the
// tools (binaries, or files when absolute) is missing, naming what provides
// it (a Debian package).
func requireTools(t testing.TB, what string, tools []tool) {
	t.Helper()
	var missing, pkgs []string
	for _, tool := range tools {
		var err error
		if filepath.IsAbs(tool.name) {
			_, err = os.Stat(tool.name)
		} else {
			_, err = exec.LookPath(tool.name)
		}
		if err != nil {
			missing = append(missing, tool.name)
			pkgs = append(pkgs, tool.pkg)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := fmt.Sprintf("netlab: %s needs %s (apt-get install %s)", what, strings.Join(missing, ", "), strings.Join(pkgs, " "))
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + "; .ci/run should have installed them")
	}
	t.Skip(msg)
}

// tailLines returns the last n lines of a file.
func tailLines(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
