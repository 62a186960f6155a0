// Command kiln-imagerun runs an unpacked container image's entrypoint the
// way a container runtime with a restricted security context would, for
// the e2e tests (podman cannot run on the test machine): in a new mount
// namespace, chrooted into the image's root mounted read-only, with
// tmpfs on the folders given, as the image's user, with no_new_privs
// (allowPrivilegeEscalation: false), and only the capabilities given in
// the bounding set. Like runc for a non-root user, it holds those
// capabilities up to the exec; what the program keeps after it comes from
// its file capabilities (the image's) or, without them, from the ambient
// set.
// It must start as root; it stays as the parent and passes SIGTERM and
// SIGINT on.
//
//	kiln-imagerun --root DIR --user 65532:65532 --caps net_bind_service,net_raw \
//	  --tmpfs /tmp,/var/cache/kiln -- /usr/local/bin/kiln rack ...
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

var capNames = map[string]uintptr{"net_bind_service": unix.CAP_NET_BIND_SERVICE, "net_raw": unix.CAP_NET_RAW}

func main() {
	root := flag.String("root", "", "the unpacked image")
	user := flag.String("user", "65532:65532", "uid:gid")
	caps := flag.String("caps", "", "capabilities to keep, comma-separated (net_bind_service, net_raw)")
	tmpfs := flag.String("tmpfs", "/tmp", "folders of the image to mount a writable tmpfs on, owned by the user")
	flag.Parse()
	if err := run(*root, *user, *caps, *tmpfs, flag.Args()); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			os.Exit(ee.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "kiln-imagerun:", err)
		os.Exit(125)
	}
}

func run(root, user, caps, tmpfs string, args []string) error {
	if root == "" || len(args) == 0 {
		return errors.New("usage: kiln-imagerun --root DIR [--user U:G] [--caps C,...] [--tmpfs D,...] -- PROGRAM ARGS")
	}
	uidS, gidS, _ := strings.Cut(user, ":")
	uid, err1 := strconv.Atoi(uidS)
	gid, err2 := strconv.Atoi(gidS)
	if err := errors.Join(err1, err2); err != nil || uid == 0 {
		return fmt.Errorf("--user %q: want a non-root uid:gid", user)
	}
	keep := map[uintptr]bool{}
	var ambient []uintptr
	for _, c := range strings.Split(caps, ",") {
		if c == "" {
			continue
		}
		n, ok := capNames[c]
		if !ok {
			return fmt.Errorf("--caps: unknown capability %q", c)
		}
		keep[n] = true
		ambient = append(ambient, n)
	}
	// Mount namespace, bounding set and fork happen on this thread.
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	root, err := filepath.Abs(root)
	if err != nil {
		return err
	}
	if err := unix.Mount(root, root, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s: %w", root, err)
	}
	for _, d := range strings.Split(tmpfs, ",") {
		if d == "" {
			continue
		}
		opts := fmt.Sprintf("mode=0700,uid=%d,gid=%d,size=256m", uid, gid)
		if d == "/tmp" {
			opts = "mode=1777,size=256m"
		}
		if err := unix.Mount("tmpfs", filepath.Join(root, d), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
			return fmt.Errorf("tmpfs on %s: %w", d, err)
		}
	}
	if err := unix.Mount("proc", filepath.Join(root, "proc"), "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("proc: %w", err)
	}
	// Not nosuid: that would ignore the image's file capabilities, which
	// container runtimes honour.
	if err := unix.Mount("", root, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NODEV, ""); err != nil {
		return fmt.Errorf("read-only root: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	for c := uintptr(0); c <= unix.CAP_LAST_CAP; c++ {
		if !keep[c] {
			if err := unix.Prctl(unix.PR_CAPBSET_DROP, c, 0, 0, 0); err != nil {
				return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
			}
		}
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/local/bin", "HOME=/var/lib/kiln"}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Chroot:      root,
		Credential:  &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}},
		AmbientCaps: ambient,
		Pdeathsig:   syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", args[0], err)
	}
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		for s := range sig {
			cmd.Process.Signal(s)
		}
	}()
	return cmd.Wait()
}
