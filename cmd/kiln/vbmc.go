package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/kilnhq/kiln/power/vbmc"
	"golang.org/x/sync/errgroup"
)

// listFlag is a flag that may be repeated.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func runVBMC(ctx context.Context, args []string, out, errOut io.Writer) int {
	fs := newFlags("vbmc", "[--config FILE | flags]", errOut)
	configFile := fs.String("config", "", "YAML or JSON file with one entry per VM (instead of the VM flags below)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json")
	vf := registerVMFlags(fs)
	if _, code, ok := parse(fs, args); !ok {
		return code
	}
	log, err := newLogger(errOut, *logLevel, *logFormat)
	if err != nil {
		fmt.Fprintln(errOut, "kiln vbmc:", err)
		return exitUsage
	}
	vms, err := vbmcConfigs(fs, *configFile, vf)
	if err != nil {
		fmt.Fprintln(errOut, "kiln vbmc:", err)
		return exitUsage
	}
	if err := serveVBMCs(ctx, vms, log); err != nil {
		log.Error("vbmc stopped", "err", err)
		return exitFail
	}
	return exitOK
}

// vmFlags are the flags of one VM, for kiln vbmc without --config.
type vmFlags struct {
	c            vbmc.VMConfig
	disks, extra listFlag
	smbios, nics listFlag
	tlsHosts     listFlag
}

func registerVMFlags(fs *flag.FlagSet) *vmFlags {
	v := &vmFlags{}
	c := &v.c
	fs.StringVar(&c.Name, "name", "vm-1", "the VM's name (its Redfish system Id)")
	fs.StringVar(&c.IPMI, "ipmi", "127.0.0.1:6230", "IPMI (UDP) address; empty: no IPMI")
	fs.StringVar(&c.Redfish, "redfish", "127.0.0.1:8000", "Redfish HTTP address; empty: none")
	fs.StringVar(&c.RedfishTLS, "redfish-tls", "", "Redfish HTTPS address, e.g. 127.0.0.1:8443")
	fs.StringVar(&c.Admin, "admin", "", "HTTP address serving only the /vbmc admin API (it is on the Redfish listeners too)")
	fs.StringVar(&c.TLSCert, "tls-cert", "", "HTTPS certificate (PEM); default: a generated self-signed one")
	fs.StringVar(&c.TLSKey, "tls-key", "", "HTTPS key (PEM)")
	fs.Var(&v.tlsHosts, "tls-host", "another name or address for the generated certificate (repeatable)")
	fs.StringVar(&c.CertOut, "cert-out", "", "write the HTTPS certificate (PEM) here, for clients to trust")
	fs.StringVar(&c.Username, "username", "admin", "login for IPMI and Redfish")
	fs.StringVar(&c.Password, "password", "", "password (visible to other users in ps; prefer --password-file or $KILN_VBMC_PASSWORD)")
	fs.StringVar(&c.PasswordFile, "password-file", "", "file holding the password")
	fs.DurationVar(&c.SessionTimeout, "session-timeout", 30*time.Minute, "Redfish sessions end after this long idle")
	fs.BoolVar(&c.DisableIPMI15, "disable-ipmi15", false, "refuse IPMI 1.5 (-I lan) sessions")
	fs.StringVar(&c.Backend, "backend", vbmc.BackendMemory, "memory (state only) or qemu")
	fs.StringVar(&c.QEMU.Binary, "qemu-binary", "qemu-system-x86_64", "QEMU binary")
	fs.StringVar(&c.QEMU.Memory, "qemu-memory", "512M", "guest memory")
	fs.IntVar(&c.QEMU.CPUs, "qemu-cpus", 1, "guest CPUs")
	fs.StringVar(&c.QEMU.Accel, "qemu-accel", "tcg", "accelerator (tcg or kvm)")
	fs.StringVar(&c.QEMU.Machine, "qemu-machine", "", "machine type, e.g. q35")
	fs.StringVar(&c.QEMU.Firmware, "qemu-firmware", "", "firmware (-bios), e.g. /usr/share/ovmf/OVMF.fd; default SeaBIOS")
	fs.StringVar(&c.QEMU.FirmwareType, "qemu-firmware-type", "", "bios or uefi: how boot overrides reach the firmware; default inferred from --qemu-firmware (OVMF: uefi)")
	fs.BoolVar(&c.QEMU.DisableNICROM, "qemu-disable-nic-rom", false, "load no option ROM on the NICs (romfile=), so OVMF's own PXE boots (UEFI only)")
	fs.Var(&v.disks, "qemu-disk", "disk image path or -drive value (repeatable)")
	fs.Var(&v.nics, "qemu-nic", "network card TAP[,MAC[,MODEL]]; TAP empty for user-mode networking (repeatable)")
	fs.Var(&v.smbios, "qemu-smbios", "-smbios value, e.g. type=1,serial=vm-1 (repeatable)")
	fs.Var(&v.extra, "qemu-arg", "extra QEMU argument (repeatable)")
	fs.StringVar(&c.QEMU.StateDir, "qemu-state-dir", "", "folder for serial.log, qemu.log and qmp.sock; default a temporary one")
	fs.DurationVar(&c.QEMU.GracefulTimeout, "qemu-graceful-timeout", 60*time.Second, "how long a graceful shutdown may take before the VM is stopped")
	fs.DurationVar(&c.Faults.Latency, "fault-latency", 0, "add this latency to every answer")
	fs.Float64Var(&c.Faults.ErrorRate, "fault-error-rate", 0, "fail this fraction (0-1) of requests")
	fs.IntVar(&c.Faults.FailNext, "fault-fail-next", 0, "fail the next N requests")
	fs.BoolVar(&c.Faults.Hang, "fault-hang", false, "answer nothing until the faults are changed through the admin API")
	fs.StringVar(&c.Faults.Protocol, "fault-protocol", "", "limit the faults to ipmi or redfish")
	return v
}

// vbmcConfigs are the VMs to serve: from the config file, or the one the
// flags describe; each has a password.
func vbmcConfigs(fs *flag.FlagSet, configFile string, vf *vmFlags) ([]vbmc.VMConfig, error) {
	var vms []vbmc.VMConfig
	if configFile != "" {
		vmFlagsSet := false
		fs.Visit(func(f *flag.Flag) {
			switch f.Name {
			case "config", "log-level", "log-format":
			default:
				vmFlagsSet = true
			}
		})
		if vmFlagsSet {
			return nil, errors.New("give either --config or VM flags, not both")
		}
		var err error
		if vms, err = vbmc.LoadConfig(configFile); err != nil {
			return nil, err
		}
	} else {
		c, err := vf.config()
		if err != nil {
			return nil, err
		}
		vms = []vbmc.VMConfig{c}
	}
	for i := range vms {
		if vms[i].Password == "" && vms[i].PasswordFile == "" {
			vms[i].Password = os.Getenv("KILN_VBMC_PASSWORD")
		}
		if vms[i].Password == "" && vms[i].PasswordFile == "" {
			return nil, fmt.Errorf("VM %s has no password: give --password-file, $KILN_VBMC_PASSWORD or password/passwordFile in the config", vms[i].Name)
		}
	}
	return vms, nil
}

// config is the VM the flags describe, checked.
func (v *vmFlags) config() (vbmc.VMConfig, error) {
	c := v.c
	c.QEMU.Disks, c.QEMU.SMBIOS, c.QEMU.Args, c.TLSHosts = v.disks, v.smbios, v.extra, v.tlsHosts
	for _, n := range v.nics {
		p := strings.SplitN(n, ",", 3)
		nic := vbmc.NIC{Tap: p[0]}
		if len(p) > 1 {
			nic.MAC = p[1]
		}
		if len(p) > 2 {
			nic.Model = p[2]
		}
		c.QEMU.NICs = append(c.QEMU.NICs, nic)
	}
	if err := c.Faults.Validate(); err != nil {
		return c, err
	}
	if c.Backend == vbmc.BackendQEMU {
		if err := c.QEMU.Validate(); err != nil {
			return c, fmt.Errorf("--qemu-*: %w", err)
		}
	}
	return c, nil
}

// serveVBMCs runs every VM until ctx ends; then each stops its machine.
func serveVBMCs(ctx context.Context, cfgs []vbmc.VMConfig, log *slog.Logger) error {
	var vms []*vbmc.VM
	for _, c := range cfgs {
		vm, err := vbmc.NewVM(c, log)
		if err != nil {
			for _, v := range vms {
				v.Close()
			}
			return err
		}
		vms = append(vms, vm)
	}
	g, ctx := errgroup.WithContext(ctx)
	for _, vm := range vms {
		g.Go(func() error { return vm.Run(ctx) })
	}
	log.Info("kiln vbmc running", "version", version, "vms", len(vms))
	err := g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}
