package netlab

import (
	"fmt"
	"io"
	"os"
	"strconv"
)

// QEMUOpts is a network-booting QEMU guest on a tap.
type QEMUOpts struct {
	Tap    string // a tap in the namespace QEMU runs in (RackNet.Tap)
	MAC    string // the NIC's MAC, e.g. 52:54:00:42:00:01
	Memory int    // MiB, default 256
	// UEFI boots OVMF (its own PXE: client arch 7, TFTP) instead of
	// SeaBIOS with the iPXE ROM (arch 0, then iPXE's user class).
	UEFI bool
	// KVM uses -accel kvm; iPXE fails under KVM here, so the default is
	// TCG (see LAB.md).
	KVM  bool
	Args []string // more QEMU arguments
}

// OVMF firmware files (Debian's ovmf package).
const (
	OVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	OVMFVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// QEMU starts a diskless guest that boots from the network on the tap,
// serial console on its log (-nographic), no reboot on reset (exits
// instead). Wait for the server's log or for lines of the console.
func QEMU(n *NS, o QEMUOpts) *Proc {
	l := n.Lab
	l.T.Helper()
	RequireBinary(l.T, "qemu-system-x86_64")
	if o.Memory == 0 {
		o.Memory = 256
	}
	accel := "tcg"
	if o.KVM {
		accel = "kvm"
	}
	nic := fmt.Sprintf("virtio-net-pci,netdev=n0,mac=%s,bootindex=1", o.MAC)
	args := []string{"qemu-system-x86_64", "-accel", accel, "-m", strconv.Itoa(o.Memory),
		"-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio", "-monitor", "none",
		"-netdev", fmt.Sprintf("tap,id=n0,ifname=%s,script=no,downscript=no", o.Tap)}
	if o.UEFI {
		vars := l.Path(l.uniq("file", "ovmf-vars") + ".fd")
		if err := copyFile(OVMFVars, vars); err != nil {
			l.T.Fatalf("netlab: %v (apt-get install ovmf)", err)
		}
		args = append(args,
			"-drive", "if=pflash,format=raw,readonly=on,file="+OVMFCode,
			"-drive", "if=pflash,format=raw,file="+vars)
		nic += ",romfile=" // the firmware's own PXE, not the iPXE ROM
	}
	args = append(args, "-device", nic)
	args = append(args, o.Args...)
	return n.Start("qemu-"+o.Tap, args...)
}

func copyFile(from, to string) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.Create(to)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}
