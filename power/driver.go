package power

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// State is a machine's power state as its BMC reports it.
type State string

// Power states.
const (
	On      State = "on"
	Off     State = "off"
	Unknown State = "unknown" // the driver can't tell (manual, or a webhook without status)
)

// Device is what the machine boots from next.
type Device string

// Boot devices.
const (
	Network Device = "network"
	Disk    Device = "disk"
)

// Boot says how the machine boots next.
type Boot struct {
	Device     Device
	Persistent bool // every boot from now on, not only the next one
	UEFI       bool // the UEFI flavour where the protocol distinguishes it
}

// Driver controls one BMC. Every call takes a context and must return when
// it ends; drivers are used by one goroutine at a time (the Executor
// serialises calls per BMC).
type Driver interface {
	PowerOn(ctx context.Context) error
	// PowerOff shuts down: gracefully (ACPI) when hard is false,
	// immediately when true.
	PowerOff(ctx context.Context, hard bool) error
	PowerCycle(ctx context.Context) error
	Status(ctx context.Context) (State, error)
	SetBoot(ctx context.Context, b Boot) error
	// Close releases sessions and connections.
	Close() error
}

// Target is everything a driver needs to reach one machine's BMC, with
// the password already resolved from its reference.
type Target struct {
	Machine  string
	Driver   string
	Address  string
	Username string
	Password string // never logged, never in an error
	Insecure bool
	Options  map[string]string
}

// Key identifies the BMC: calls with the same key are serialised.
func (t Target) Key() string { return t.Driver + "://" + t.Address }

// String names the target for logs and errors, without secrets.
func (t Target) String() string {
	return fmt.Sprintf("machine %s (%s BMC %s)", t.Machine, t.Driver, t.Address)
}

// ErrPermanent marks errors that retrying cannot fix: wrong credentials,
// an operation the BMC does not support, a malformed request.
var ErrPermanent = errors.New("permanent")

// ErrUnsupported means the driver or BMC can't do the operation.
var ErrUnsupported = fmt.Errorf("not supported: %w", ErrPermanent)

// ErrAuth means the BMC refused the credentials.
var ErrAuth = fmt.Errorf("authentication failed: %w", ErrPermanent)

// Permanent marks err as not worth retrying.
func Permanent(err error) error {
	if err == nil || errors.Is(err, ErrPermanent) {
		return err
	}
	return &permanent{err}
}

type permanent struct{ err error }

func (p *permanent) Error() string        { return p.err.Error() }
func (p *permanent) Unwrap() []error      { return []error{p.err, ErrPermanent} }
func (p *permanent) Is(target error) bool { return target == ErrPermanent }

// OpError is what every failed operation returns: which machine, which
// BMC, which operation, and why. It never carries the password.
type OpError struct {
	Target Target
	Op     string
	Err    error
}

func (e *OpError) Error() string {
	msg := fmt.Sprintf("power %s of %s: %v", e.Op, e.Target, e.Err)
	return redact(msg, e.Target.Password)
}

func (e *OpError) Unwrap() error { return e.Err }

// redact removes a secret from text, in case a library echoed it.
func redact(s, secret string) string {
	if len(secret) < 3 {
		return s
	}
	return strings.ReplaceAll(s, secret, "<redacted>")
}

// Factory builds a driver for a target.
type Factory func(Target) (Driver, error)
