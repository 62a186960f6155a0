package vbmc

import (
	"context"
	"errors"
	"fmt"
)

// PowerState is a machine's power state, spelled as Redfish spells it.
type PowerState string

// Power states.
const (
	On  PowerState = "On"
	Off PowerState = "Off"
)

// BootEnabled says whether and for how long a boot override applies, as
// Redfish's BootSourceOverrideEnabled (IPMI: the boot flags' valid and
// persistent bits).
type BootEnabled string

// Boot override durations.
const (
	BootDisabled   BootEnabled = "Disabled"   // no override: the firmware's own order
	BootOnce       BootEnabled = "Once"       // the next start only, then Disabled
	BootContinuous BootEnabled = "Continuous" // every start until changed
)

// BootTarget is the device an override boots from, as Redfish's
// BootSourceOverrideTarget (IPMI: the boot device selector).
type BootTarget string

// Boot targets.
const (
	TargetNone BootTarget = "None" // no override
	TargetPxe  BootTarget = "Pxe"  // the network (PXE / iPXE)
	TargetHdd  BootTarget = "Hdd"  // the first disk
)

// Boot is a machine's boot override.
type Boot struct {
	Enabled BootEnabled
	Target  BootTarget
	UEFI    bool // Redfish BootSourceOverrideMode UEFI (else Legacy); IPMI EFI boot flag
}

// Active reports whether the override changes how the machine starts.
func (b Boot) Active() bool {
	return (b.Enabled == BootOnce || b.Enabled == BootContinuous) && (b.Target == TargetPxe || b.Target == TargetHdd)
}

// Network reports whether the machine starts from the network.
func (b Boot) Network() bool { return b.Active() && b.Target == TargetPxe }

func (b Boot) String() string {
	mode := "Legacy"
	if b.UEFI {
		mode = "UEFI"
	}
	return fmt.Sprintf("%s/%s/%s", b.Enabled, b.Target, mode)
}

func (b Boot) validate() error {
	switch b.Enabled {
	case BootDisabled, BootOnce, BootContinuous:
	default:
		return fmt.Errorf("boot override %q: want Disabled, Once or Continuous", b.Enabled)
	}
	switch b.Target {
	case TargetNone, TargetPxe, TargetHdd:
	default:
		return fmt.Errorf("boot target %q: want None, Pxe or Hdd", b.Target)
	}
	return nil
}

// Machine is what a virtual BMC controls. Implementations are safe for
// concurrent use; every call returns when ctx ends.
type Machine interface {
	// PowerOn starts the machine, booting as boot says; a no-op when it
	// is on.
	PowerOn(ctx context.Context, boot Boot) error
	// PowerOff stops the machine at once when hard; otherwise it asks the
	// operating system to shut down (ACPI) and returns: the machine goes
	// off later, or is forced off after the backend's timeout. A no-op
	// when it is off.
	PowerOff(ctx context.Context, hard bool) error
	// Reset restarts a running machine at once (a warm reset), booting as
	// boot says. ErrPoweredOff when it is off.
	Reset(ctx context.Context, boot Boot) error
	// State is the current power state.
	State(ctx context.Context) (PowerState, error)
	// Close stops the machine and releases everything it holds.
	Close() error
}

// ErrPoweredOff means the operation needs a running machine.
var ErrPoweredOff = errors.New("machine is powered off")

// ErrClosed means the machine or BMC was closed.
var ErrClosed = errors.New("closed")
