package power

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/kilnhq/kiln/spec"
)

// ResolveSecret returns the secret a reference points at: the contents of
// a file (trailing newline removed), an environment variable, or the
// plaintext written in the source. Errors name the reference, never the
// secret.
func ResolveSecret(ref *spec.SecretRef) (string, error) {
	switch {
	case ref == nil:
		return "", nil
	case ref.FromFile != "":
		b, err := os.ReadFile(ref.FromFile)
		if err != nil {
			var pe *os.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return "", fmt.Errorf("password file %s: %w", ref.FromFile, err)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	case ref.FromEnv != "":
		v, ok := os.LookupEnv(ref.FromEnv)
		if !ok {
			return "", fmt.Errorf("password: environment variable %s is not set", ref.FromEnv)
		}
		return v, nil
	case ref.FromSecret && ref.Value == "":
		return "", errors.New("password: kept in the rack's secrets by Kiln, but not loaded (can this rack's etcd user read its secrets/ prefix?)")
	}
	return ref.Value, nil
}

// BootFor is how a machine boots from dev next time: once, in the mode
// of its firmware, so that a BMC that distinguishes legacy and UEFI boot
// overrides (Redfish BootSourceOverrideMode, IPMI's EFI boot flag) does
// not switch a UEFI machine to legacy boot. An unset firmware is UEFI, the
// spec's default.
func BootFor(m *spec.Machine, dev Device) Boot {
	return Boot{Device: dev, UEFI: m.Spec.Firmware != "bios"}
}

// TargetFor builds the power target of a machine, resolving its password.
func TargetFor(m *spec.Machine) (Target, error) {
	b := m.Spec.BMC
	if b == nil {
		return Target{Machine: m.Metadata.Name, Driver: "manual"}, nil
	}
	pw, err := ResolveSecret(b.Password)
	if err != nil {
		return Target{}, fmt.Errorf("machine %s: %w", m.Metadata.Name, err)
	}
	return Target{
		Machine:  m.Metadata.Name,
		Driver:   b.Driver,
		Address:  b.Address,
		Username: b.Username,
		Password: pw,
		Insecure: b.SkipVerify(),
		Options:  b.Options,
	}, nil
}
