package power

import (
	"context"
	"fmt"
)

// ErrManual means a person must act: the machine has no BMC Kiln drives.
var ErrManual = fmt.Errorf("a person must act: %w", ErrPermanent)

// manual is the driver for machines powered by hand. Every action says
// what the person must do; the state is always unknown.
type manual struct{ t Target }

func newManual(t Target) (Driver, error) { return &manual{t}, nil }

func (m *manual) PowerOn(context.Context) error {
	return fmt.Errorf("power machine %s on by hand: %w", m.t.Machine, ErrManual)
}

func (m *manual) PowerOff(_ context.Context, hard bool) error {
	how := "shut machine %s down by hand"
	if hard {
		how = "power machine %s off by hand"
	}
	return fmt.Errorf(how+": %w", m.t.Machine, ErrManual)
}

func (m *manual) PowerCycle(context.Context) error {
	return fmt.Errorf("power-cycle machine %s by hand: %w", m.t.Machine, ErrManual)
}

func (m *manual) Status(context.Context) (State, error) { return Unknown, nil }

func (m *manual) SetBoot(_ context.Context, b Boot) error {
	return fmt.Errorf("make machine %s boot from %s by hand: %w", m.t.Machine, b.Device, ErrManual)
}

func (m *manual) Close() error { return nil }
