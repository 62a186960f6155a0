package vbmc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// QEMUConfig describes the virtual machine a QEMU machine starts at each
// power-on. Only Name is required.
type QEMUConfig struct {
	Name     string `yaml:"-"`        // the guest's name (-name), set from the VM's name
	Binary   string `yaml:"binary"`   // default qemu-system-x86_64
	Memory   string `yaml:"memory"`   // -m; default 512M
	CPUs     int    `yaml:"cpus"`     // -smp; default 1
	Accel    string `yaml:"accel"`    // -accel; default tcg (iPXE under KVM is unreliable in nested setups)
	Machine  string `yaml:"machine"`  // -machine, e.g. q35; default QEMU's
	Firmware string `yaml:"firmware"` // -bios, e.g. /usr/share/ovmf/OVMF.fd for UEFI; default SeaBIOS
	// FirmwareType is "bios" or "uefi": how boot overrides reach the
	// firmware (see Args). Empty: uefi when Firmware's file name names
	// OVMF, edk2, AAVMF or UEFI, else bios.
	FirmwareType string `yaml:"firmwareType"`
	// Disks are -drive values; a plain path becomes
	// file=PATH,format=qcow2|raw (by extension),if=virtio (under UEFI a
	// virtio-blk-pci device of its own, so that it can take a bootindex).
	Disks []string `yaml:"disks"`
	// NICs are the network cards; none means QEMU's default (user-mode
	// networking on an e1000).
	NICs []NIC `yaml:"nics"`
	// DisableNICROM loads no option ROM on the NICs (romfile= empty), so
	// that the firmware's own network boot runs: under OVMF, UEFI PXE
	// (DHCP with client architecture 7, then ipxe.efi over TFTP) instead
	// of the iPXE ROM QEMU would load. UEFI only: SeaBIOS has no network
	// boot of its own.
	DisableNICROM bool     `yaml:"disableNICROM"`
	SMBIOS        []string `yaml:"smbios"` // -smbios values, e.g. type=1,serial=vm-1
	Args          []string `yaml:"args"`   // more arguments, appended last
	// StateDir holds serial.log (the console of the current boot;
	// serial.log.1 the previous one), qemu.log (QEMU's own output) and
	// qmp.sock. Empty: a temporary folder removed by Close.
	StateDir string `yaml:"stateDir"`
	// GracefulTimeout is how long a graceful shutdown may take before the
	// VM is stopped hard; default 60s.
	GracefulTimeout time.Duration `yaml:"gracefulTimeout"`
	// StartTimeout bounds a power-on until QEMU answers on QMP; default 30s.
	StartTimeout time.Duration `yaml:"startTimeout"`
	Logger       *slog.Logger  `yaml:"-"`
}

// NIC is one network card of a QEMU VM.
type NIC struct {
	Tap   string `yaml:"tap"`   // host tap interface; empty: user-mode networking
	MAC   string `yaml:"mac"`   // default: QEMU's
	Model string `yaml:"model"` // QEMU device; default virtio-net-pci
}

// QEMU is a machine backed by a qemu-system process: power-on starts the
// process, power-off ends it (ACPI first when graceful, through QMP), and
// the machine is off whenever no process runs, also when the guest shuts
// itself down.
type QEMU struct {
	cfg     QEMUConfig
	log     *slog.Logger
	tempDir bool
	ctx     context.Context // ends with Close
	cancel  context.CancelFunc
	wg      sync.WaitGroup // process reapers and graceful-shutdown watchers
	opMu    sync.Mutex     // serialises power operations
	mu      sync.Mutex     // guards run and closed
	run     *qemuRun
	closed  bool
}

// qemuRun is one QEMU process.
type qemuRun struct {
	cmd      *exec.Cmd
	done     chan struct{} // closed when the process has exited and been reaped
	err      error         // its exit status, once done
	after    bootPlan      // how the VM boots after a reset (QMP system_reset or the guest's own)
	graceful bool          // a graceful-shutdown watcher runs
}

// NewQEMU checks cfg and prepares the state folder; no process starts
// until PowerOn.
func NewQEMU(cfg QEMUConfig) (*QEMU, error) {
	if cfg.Name == "" {
		return nil, errors.New("qemu: no name")
	}
	if cfg.Binary == "" {
		cfg.Binary = "qemu-system-x86_64"
	}
	if cfg.Memory == "" {
		cfg.Memory = "512M"
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 1
	}
	if cfg.Accel == "" {
		cfg.Accel = "tcg"
	}
	if cfg.GracefulTimeout == 0 {
		cfg.GracefulTimeout = 60 * time.Second
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 30 * time.Second
	}
	if cfg.CPUs < 0 || cfg.GracefulTimeout < 0 || cfg.StartTimeout < 0 {
		return nil, errors.New("qemu: negative cpus or timeout")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	if _, err := exec.LookPath(cfg.Binary); err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	q := &QEMU{cfg: cfg, log: cfg.Logger}
	if q.log == nil {
		q.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	q.log = q.log.With("vm", cfg.Name)
	if q.cfg.StateDir == "" {
		d, err := os.MkdirTemp("", "kiln-vbmc-"+cfg.Name+"-")
		if err != nil {
			return nil, fmt.Errorf("qemu: %w", err)
		}
		q.cfg.StateDir, q.tempDir = d, true
	} else if err := os.MkdirAll(q.cfg.StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	if n := len(q.QMPSocket()); n > 107 {
		return nil, fmt.Errorf("qemu: QMP socket path %s is %d bytes, longer than a unix socket allows; use a shorter state folder", q.QMPSocket(), n)
	}
	q.ctx, q.cancel = context.WithCancel(context.Background())
	return q, nil
}

// SerialLog is the file holding the console output of the current boot.
func (q *QEMU) SerialLog() string { return filepath.Join(q.cfg.StateDir, "serial.log") }

// QMPSocket is the QEMU monitor (QMP) socket of the running VM.
func (q *QEMU) QMPSocket() string { return filepath.Join(q.cfg.StateDir, "qmp.sock") }

// OutputLog is the file holding QEMU's own output (errors) of the current boot.
func (q *QEMU) OutputLog() string { return filepath.Join(q.cfg.StateDir, "qemu.log") }

// PID is the QEMU process's id, 0 when off.
func (q *QEMU) PID() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.run == nil {
		return 0
	}
	return q.run.cmd.Process.Pid
}

// Firmware types.
const (
	FirmwareBIOS = "bios"
	FirmwareUEFI = "uefi"
)

// Validate checks the options that depend on each other; the errors name
// the configuration key.
func (c QEMUConfig) Validate() error {
	switch c.FirmwareType {
	case "", FirmwareBIOS, FirmwareUEFI:
	default:
		return fmt.Errorf("firmwareType %q: use bios or uefi (or leave it out to infer it from firmware)", c.FirmwareType)
	}
	if c.DisableNICROM {
		if len(c.NICs) == 0 {
			return errors.New("disableNICROM needs nics: QEMU's default NIC takes no romfile option")
		}
		if !c.UEFI() {
			return fmt.Errorf("disableNICROM needs UEFI firmware (firmware: /usr/share/ovmf/OVMF.fd, or firmwareType: uefi): %s has no network boot without the NIC's ROM", c.firmwareName())
		}
	}
	return nil
}

// UEFI reports whether the VM's firmware is UEFI (OVMF).
func (c QEMUConfig) UEFI() bool {
	switch c.FirmwareType {
	case FirmwareUEFI:
		return true
	case FirmwareBIOS:
		return false
	}
	name := strings.ToLower(filepath.Base(c.Firmware))
	for _, w := range []string{"ovmf", "edk2", "aavmf", "uefi"} {
		if c.Firmware != "" && strings.Contains(name, w) {
			return true
		}
	}
	return false
}

func (c QEMUConfig) firmwareName() string {
	if c.Firmware == "" {
		return "SeaBIOS"
	}
	return c.Firmware
}

// bootPlan is how one start or reset of the VM boots: which devices come
// first, and whether only this once.
type bootPlan struct {
	first BootTarget // TargetNone: the firmware's own order
	once  bool
}

func planFor(b Boot) bootPlan {
	if !b.Active() {
		return bootPlan{first: TargetNone}
	}
	return bootPlan{first: b.Target, once: b.Enabled == BootOnce}
}

// afterReset is how the VM boots after the next reset once it has
// started with p, when a one-time override reverts by itself.
func (p bootPlan) afterReset() bootPlan {
	if p.once {
		return bootPlan{first: TargetNone}
	}
	return p
}

func (p bootPlan) String() string {
	if p.first == TargetNone {
		return "firmware order"
	}
	if p.once {
		return string(p.first) + " first, once"
	}
	return string(p.first) + " first"
}

// bootArg is the -boot value of p under SeaBIOS: QEMU's once= is undone
// by the guest's first reset, as a one-time override should be.
func bootArg(p bootPlan) string {
	if p.first == TargetNone {
		return ""
	}
	dev := "c"
	if p.first == TargetPxe {
		dev = "n"
	}
	if p.once {
		return "once=" + dev
	}
	return "order=" + dev
}

// Args is the command line (without the binary) that powering on with
// boot would run.
//
// Under SeaBIOS an override is QEMU's -boot (once= or order=). OVMF
// ignores -boot and follows the bootindex of each device (QEMU hands
// them over as the fw_cfg boot order, read at every firmware start), so
// under UEFI the devices the override names get the lowest bootindex
// values: the NICs then the disks given as paths for a network override,
// the other way round for a disk override. Without an override no device
// has a bootindex and the firmware keeps its own order.
func (q *QEMU) Args(boot Boot) []string {
	c := q.cfg
	plan := planFor(boot)
	uefi := c.UEFI()
	a := []string{"-name", "guest=" + c.Name}
	if c.Machine != "" {
		a = append(a, "-machine", c.Machine)
	}
	a = append(a,
		"-accel", c.Accel,
		"-m", c.Memory,
		"-smp", strconv.Itoa(c.CPUs),
		"-nographic", "-monitor", "none",
		"-serial", "file:"+q.SerialLog(),
		"-qmp", "unix:"+q.QMPSocket()+",server=on,wait=off",
	)
	if c.Firmware != "" {
		a = append(a, "-bios", c.Firmware)
	}
	for _, s := range c.SMBIOS {
		a = append(a, "-smbios", s)
	}
	pathDisks := 0
	for _, d := range c.Disks {
		if !strings.Contains(d, "=") {
			pathDisks++
		}
	}
	order := bootOrder(plan, uefi, len(c.NICs), pathDisks)
	n := 0 // path disks so far
	for i, d := range c.Disks {
		if strings.Contains(d, "=") { // a full -drive value: as given
			a = append(a, "-drive", d)
			continue
		}
		format := "raw"
		if strings.HasSuffix(d, ".qcow2") {
			format = "qcow2"
		}
		if !uefi {
			a = append(a, "-drive", "file="+d+",format="+format+",if=virtio")
			continue
		}
		id := fmt.Sprintf("disk%d", i)
		a = append(a, "-drive", "file="+d+",format="+format+",if=none,id="+id,
			"-device", "virtio-blk-pci,drive="+id+",id="+id+order.index(TargetHdd, n))
		n++
	}
	for i, n := range c.NICs {
		id := fmt.Sprintf("net%d", i)
		if n.Tap != "" {
			a = append(a, "-netdev", "tap,id="+id+",ifname="+n.Tap+",script=no,downscript=no")
		} else {
			a = append(a, "-netdev", "user,id="+id)
		}
		model := n.Model
		if model == "" {
			model = "virtio-net-pci"
		}
		dev := model + ",netdev=" + id + ",id=" + id
		if n.MAC != "" {
			dev += ",mac=" + n.MAC
		}
		if c.DisableNICROM {
			dev += ",romfile="
		}
		a = append(a, "-device", dev+order.index(TargetPxe, i))
	}
	if !uefi {
		if ba := bootArg(plan); ba != "" {
			a = append(a, "-boot", ba)
		}
	}
	return append(a, c.Args...)
}

// bootIndexes numbers the devices of a UEFI VM for a boot plan.
type bootIndexes struct {
	nic, disk int // the first bootindex of each kind; 0: none
}

func bootOrder(p bootPlan, uefi bool, nics, disks int) bootIndexes {
	switch {
	case !uefi || p.first == TargetNone:
		return bootIndexes{}
	case p.first == TargetPxe:
		return bootIndexes{nic: 1, disk: 1 + nics}
	default:
		return bootIndexes{disk: 1, nic: 1 + disks}
	}
}

// index is the ",bootindex=N" option of the i-th device of a kind, or "".
func (o bootIndexes) index(kind BootTarget, i int) string {
	first := o.disk
	if kind == TargetPxe {
		first = o.nic
	}
	if first == 0 {
		return ""
	}
	return ",bootindex=" + strconv.Itoa(first+i)
}

// bootDevices are the QOM paths of the devices Args gave a bootindex.
func (q *QEMU) bootDevices() []string {
	var paths []string
	for i, d := range q.cfg.Disks {
		if !strings.Contains(d, "=") {
			paths = append(paths, fmt.Sprintf("/machine/peripheral/disk%d", i))
		}
	}
	for i := range q.cfg.NICs {
		paths = append(paths, fmt.Sprintf("/machine/peripheral/net%d", i))
	}
	return paths
}

func (q *QEMU) current() (*qemuRun, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return nil, ErrClosed
	}
	return q.run, nil
}

// PowerOn implements Machine: it starts QEMU and returns once QEMU answers
// on its QMP socket (the firmware is running then).
func (q *QEMU) PowerOn(ctx context.Context, boot Boot) error {
	q.opMu.Lock()
	defer q.opMu.Unlock()
	run, err := q.current()
	if err != nil || run != nil {
		return err
	}
	return q.start(ctx, boot)
}

// start runs a new QEMU process. opMu is held and no process runs.
func (q *QEMU) start(ctx context.Context, boot Boot) error {
	ctx, cancel := context.WithTimeout(ctx, q.cfg.StartTimeout)
	defer cancel()
	if err := os.Rename(q.SerialLog(), q.SerialLog()+".1"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	os.Remove(q.QMPSocket())
	out, err := os.Create(q.OutputLog())
	if err != nil {
		return err
	}
	if boot.Active() && boot.UEFI != q.cfg.UEFI() {
		// A real BMC would switch the firmware's mode; this VM has one.
		q.log.Warn("boot override asks for another firmware mode than the VM has; booting with the VM's firmware",
			"boot", boot.String(), "firmware", q.cfg.firmwareName(), "uefi", q.cfg.UEFI())
	}
	plan := planFor(boot)
	args := q.Args(boot)
	cmd := exec.Command(q.cfg.Binary, args...)
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group: a Ctrl-C meant for kiln does not reach QEMU,
	// which kiln stops itself. Killed if kiln dies without stopping it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		out.Close()
		return fmt.Errorf("qemu: %w", err)
	}
	run := &qemuRun{cmd: cmd, done: make(chan struct{}), after: plan.afterReset()}
	q.mu.Lock()
	q.run = run
	q.mu.Unlock()
	q.wg.Go(func() {
		run.err = cmd.Wait()
		out.Close()
		q.mu.Lock()
		if q.run == run {
			q.run = nil
		}
		q.mu.Unlock()
		close(run.done)
		q.log.Info("QEMU exited", "pid", cmd.Process.Pid, "status", exitStatus(run.err))
	})
	q.log.Info("QEMU started", "pid", cmd.Process.Pid, "boot", plan.String(), "serial", q.SerialLog())
	q.log.Debug("QEMU command line", "args", strings.Join(args, " "))

	// Ready when QMP answers; failed when the process exits first.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := qmp(ctx, q.QMPSocket(), "query-status", nil); err == nil {
			q.revertOnce(ctx, run, plan)
			return nil
		}
		select {
		case <-run.done:
			return fmt.Errorf("qemu exited at start (%s): %s", exitStatus(run.err), tail(q.OutputLog(), 1000))
		case <-ctx.Done():
			q.stop(run)
			return fmt.Errorf("qemu did not answer on QMP: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// revertOnce makes a one-time override under UEFI last for this boot
// only, as -boot once= does under SeaBIOS: the firmware has read the boot
// order of this boot already (QEMU rebuilds it from the devices' bootindex
// at every reset), so clearing the bootindex now gives a reset, the
// guest's own included, the firmware's order again. When QEMU refuses,
// the override stays for as long as this process runs.
func (q *QEMU) revertOnce(ctx context.Context, run *qemuRun, plan bootPlan) {
	if !plan.once || !q.cfg.UEFI() {
		return
	}
	for _, dev := range q.bootDevices() {
		if _, err := qmp(ctx, q.QMPSocket(), "qom-set", map[string]any{"path": dev, "property": "bootindex", "value": -1}); err != nil {
			q.log.Warn("could not clear a one-time boot order; it stays until the VM is powered off or reset through the BMC",
				"device", dev, "err", err)
			q.mu.Lock()
			run.after = bootPlan{first: plan.first}
			q.mu.Unlock()
			return
		}
	}
}

// stop ends run: QMP quit, then SIGKILL if QEMU lingers; it returns once
// the process is reaped.
func (q *QEMU) stop(run *qemuRun) {
	select {
	case <-run.done:
		return
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	qmp(ctx, q.QMPSocket(), "quit", nil) //nolint:errcheck // QEMU may close the socket before answering
	cancel()
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-run.done:
		return
	case <-t.C:
	}
	q.log.Warn("QEMU ignored quit; killing it", "pid", run.cmd.Process.Pid)
	run.cmd.Process.Kill()
	<-run.done
}

// PowerOff implements Machine.
func (q *QEMU) PowerOff(ctx context.Context, hard bool) error {
	q.opMu.Lock()
	defer q.opMu.Unlock()
	run, err := q.current()
	if err != nil || run == nil {
		return err
	}
	if hard {
		q.stop(run)
		return nil
	}
	if _, err := qmp(ctx, q.QMPSocket(), "system_powerdown", nil); err != nil {
		select {
		case <-run.done: // it went off meanwhile
			return nil
		default:
		}
		return err
	}
	q.mu.Lock()
	watching := run.graceful
	run.graceful = true
	q.mu.Unlock()
	if !watching {
		q.wg.Go(func() {
			t := time.NewTimer(q.cfg.GracefulTimeout)
			defer t.Stop()
			select {
			case <-run.done:
			case <-q.ctx.Done(): // Close stops it
			case <-t.C:
				q.log.Info("graceful shutdown timed out; stopping the VM", "timeout", q.cfg.GracefulTimeout)
				q.opMu.Lock()
				q.stop(run)
				q.opMu.Unlock()
			}
		})
	}
	return nil
}

// Reset implements Machine: QMP system_reset when the VM would boot as
// asked after a reset; otherwise QEMU restarts with the new boot order
// (a new process: the reliable way to hand the firmware another -boot or
// bootindex, and the same for SeaBIOS and OVMF).
func (q *QEMU) Reset(ctx context.Context, boot Boot) error {
	q.opMu.Lock()
	defer q.opMu.Unlock()
	run, err := q.current()
	if err != nil {
		return err
	}
	if run == nil {
		return ErrPoweredOff
	}
	q.mu.Lock()
	after := run.after // what the VM boots from after a reset
	q.mu.Unlock()
	if want := planFor(boot); want != after {
		q.log.Info("reset with a new boot order: restarting QEMU", "boot", want.String(), "was", after.String())
		q.stop(run)
		return q.start(ctx, boot)
	}
	_, err = qmp(ctx, q.QMPSocket(), "system_reset", nil)
	return err
}

// State implements Machine.
func (q *QEMU) State(context.Context) (PowerState, error) {
	run, err := q.current()
	if err != nil {
		return "", err
	}
	if run == nil {
		return Off, nil
	}
	return On, nil
}

// Close implements Machine: the VM is stopped (hard) and every goroutine
// has ended when it returns.
func (q *QEMU) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	q.mu.Unlock()
	q.cancel()
	q.opMu.Lock()
	q.mu.Lock()
	run := q.run
	q.mu.Unlock()
	if run != nil {
		q.stop(run)
	}
	q.opMu.Unlock()
	q.wg.Wait()
	if q.tempDir {
		return os.RemoveAll(q.cfg.StateDir)
	}
	return nil
}

func exitStatus(err error) string {
	if err == nil {
		return "exit 0"
	}
	return err.Error()
}

// tail is the end of a file, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}
