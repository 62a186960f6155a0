package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kilnhq/kiln/agents/machine"
	"github.com/kilnhq/kiln/agents/machine/facts"
	"golang.org/x/sys/unix"
)

// modulesList names the kernel modules to load at boot, one path a line
// relative to /lib/modules/<release>/, in dependency order.
const modulesList = "/etc/kiln/modules"

// runInit is PID 1 of the ephemeral image: it mounts the kernel's
// filesystems, loads the NIC and disk drivers, waits for the devices,
// runs the agent and then powers off (or reboots, or waits, as
// kiln.after says). It never returns: the kernel panics when init exits.
func runInit() {
	mountErrs := mountAll()
	var console io.Writer = os.Stderr
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0); err == nil {
		console = f
	}
	cmdline := ""
	if b, err := os.ReadFile("/proc/cmdline"); err == nil {
		cmdline = string(b)
	}
	log := newLogger(console, cmdlineHasDebug(cmdline))
	fmt.Fprintf(console, "kiln-agent %s: starting as init\n", version)
	for _, err := range mountErrs {
		log.Warn("mount", "err", err)
	}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		log.Error("uname", "err", err)
	}
	loadModules(log, modulesList, filepath.Join("/lib/modules", unix.ByteSliceToString(uts.Release[:])), loadModule)
	ctx := context.Background()
	waitDevices(ctx, log, 15*time.Second)

	cfg, err := machine.ParseCmdline(cmdline)
	if err != nil {
		fmt.Fprintf(console, "kiln-agent: result failure: %v\n", err)
		cfg.After = machine.AfterWait // nobody can be told: keep the console for a person
	} else {
		opts := options{network: true, netWait: 60 * time.Second, roots: facts.DefaultRoots, caPath: machine.CAPath}
		_ = agentMain(ctx, cfg, opts, log, console) // reported and printed already
	}
	finish(cfg.After, log, console)
}

// mountAll mounts proc, sysfs, devtmpfs, /run and /tmp. A target that is
// already mounted (EBUSY) is fine.
func mountAll() []error {
	var errs []error
	const nosuid, noexec = unix.MS_NOSUID, unix.MS_NOEXEC
	for _, m := range []struct {
		source, target, fstype string
		flags                  uintptr
		data                   string
	}{
		{"proc", "/proc", "proc", nosuid | noexec, ""},
		{"sysfs", "/sys", "sysfs", nosuid | noexec, ""},
		{"devtmpfs", "/dev", "devtmpfs", nosuid, "mode=0755"},
		{"tmpfs", "/run", "tmpfs", nosuid | noexec, "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", nosuid, "mode=1777"},
	} {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			errs = append(errs, err)
			continue
		}
		err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data)
		if err != nil && !errors.Is(err, unix.EBUSY) {
			errs = append(errs, fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err))
		}
	}
	return errs
}

// loadModules loads the modules listed in list, relative to dir, with
// load (finit_module). A module already loaded (or built in) is skipped;
// any other error is logged and the next module is tried. It returns how
// many loaded.
func loadModules(log *slog.Logger, list, dir string, load func(string) error) int {
	f, err := os.Open(list)
	if err != nil {
		if !os.IsNotExist(err) {
			log.Warn("kernel modules list", "err", err)
		}
		return 0
	}
	defer f.Close()
	loaded, failed := 0, 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rel := strings.TrimSpace(sc.Text())
		if rel == "" || strings.HasPrefix(rel, "#") {
			continue
		}
		if err := load(filepath.Join(dir, rel)); err != nil {
			failed++
			log.Warn("load kernel module", "module", rel, "err", err)
			continue
		}
		loaded++
	}
	if err := sc.Err(); err != nil {
		log.Warn("kernel modules list", "err", err)
	}
	log.Info("kernel modules loaded", "loaded", loaded, "failed", failed, "dir", dir)
	return loaded
}

// loadModule loads one module file; EEXIST (already loaded) is success.
func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	flags := 0
	switch filepath.Ext(path) {
	case ".xz", ".zst", ".gz":
		flags = unix.MODULE_INIT_COMPRESSED_FILE // the kernel decompresses (5.17+)
	}
	err = unix.FinitModule(int(f.Fd()), "", flags)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

// waitDevices waits until a network interface and a disk have appeared
// and the kernel has sent no device event for a second, or until the
// deadline: drivers probe in the background after their module loads.
// It wakes on kernel uevents, with a slow poll as a fallback.
func waitDevices(ctx context.Context, log *slog.Logger, deadline time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	events := ueventStream(ctx, log)
	const quiet = time.Second
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	lastEvent := time.Now()
	for {
		nics, disks := deviceCounts()
		if nics > 0 && disks > 0 && time.Since(lastEvent) >= quiet {
			log.Info("devices ready", "nics", nics, "disks", disks)
			return
		}
		select {
		case <-ctx.Done():
			log.Warn("devices not all there at the deadline; going on", "nics", nics, "disks", disks)
			return
		case _, ok := <-events:
			if ok {
				lastEvent = time.Now()
			} else {
				events = nil
			}
		case <-tick.C:
		}
	}
}

func deviceCounts() (nics, disks int) {
	if ns, err := facts.NICs("/sys"); err == nil {
		nics = len(ns)
	}
	if ds, err := facts.Disks(facts.DefaultRoots); err == nil {
		disks = len(ds)
	}
	return nics, disks
}

// ueventStream delivers a value for each kernel uevent until ctx ends;
// nil when the socket cannot be opened (the caller polls).
func ueventStream(ctx context.Context, log *slog.Logger) <-chan struct{} {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		log.Debug("uevent socket", "err", err)
		return nil
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1}); err != nil {
		unix.Close(fd)
		log.Debug("uevent bind", "err", err)
		return nil
	}
	f := os.NewFile(uintptr(fd), "uevent")
	ch := make(chan struct{}, 1)
	stop := context.AfterFunc(ctx, func() { _ = f.SetReadDeadline(time.Now()) })
	go func() {
		defer close(ch)
		defer stop()
		defer f.Close()
		buf := make([]byte, 8192)
		for {
			if _, err := f.Read(buf); err != nil {
				return
			}
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}()
	return ch
}

// finish syncs the disks and powers off, reboots, or waits for ever.
func finish(after string, log *slog.Logger, console io.Writer) {
	unix.Sync()
	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	switch after {
	case machine.AfterReboot:
		cmd = unix.LINUX_REBOOT_CMD_RESTART
	case machine.AfterWait:
		fmt.Fprintln(console, "kiln-agent: done; waiting (kiln.after=wait)")
		sleepForever()
	}
	fmt.Fprintf(console, "kiln-agent: %s\n", after)
	if err := unix.Reboot(cmd); err != nil {
		log.Error("power off", "err", err)
	}
	sleepForever() // PID 1 must not exit
}

// sleepForever blocks without ending: a bare select{} with no other
// goroutine is a fatal deadlock for the Go runtime, and init must not die.
func sleepForever() {
	for {
		time.Sleep(time.Hour)
	}
}
