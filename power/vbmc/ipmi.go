package vbmc

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	gobmc "github.com/bougou/go-ipmi/pkg/bmc"
	"github.com/bougou/go-ipmi/pkg/command/chassis"
	"github.com/bougou/go-ipmi/pkg/hal"
	"github.com/bougou/go-ipmi/pkg/handlers"
	"github.com/bougou/go-ipmi/pkg/server"
	"github.com/bougou/go-ipmi/pkg/types"
)

// ipmiServer is the IPMI endpoint: go-ipmi's BMC server (RMCP+ and IPMI
// 1.5 sessions, users, cipher suites) with chassis commands wired to the
// BMC's machine.
type ipmiServer struct {
	b    *BMC
	conn *faultConn
	gb   *gobmc.BMC
	srv  *server.Server

	mu       sync.Mutex
	sessions map[uint32]bool // RMCP+ sessions seen, for DropSessions
	v15      map[uint32]bool // IPMI 1.5 sessions seen
	bootAck  *types.BootOptionParam_BootInfoAcknowledge
}

func newIPMIServer(b *BMC, conn *net.UDPConn) *ipmiServer {
	s := &ipmiServer{b: b, sessions: map[uint32]bool{}, v15: map[uint32]bool{}}
	var opts []gobmc.Option
	if b.cfg.DisableIPMI15 {
		opts = append(opts, gobmc.WithV15Disabled())
	}
	s.gb = gobmc.New(gobmc.DeviceInfo{
		DeviceID:       0x20,
		FirmwareMajor:  1,
		IPMIVersion:    0x02,   // 2.0 (BCD, minor in the high nibble)
		ManufacturerID: 0xFFFE, // reserved: no IANA number
		ProductID:      0x4b4e, // "KN"
		// chassis device, bridge, IPMB event receiver/generator, FRU, SEL, SDR, sensor
		AdditionalDeviceSupport: 0x80,
	}, b.uuid, ipmiHAL{s}, opts...)
	user, err := s.gb.Users.Add(2, b.cfg.Username)
	if err == nil {
		user.SetPassword([]byte(b.cfg.Password))
		user.Enabled = true
		user.ChannelAccess[1] = gobmc.UserChannelAccess{MaxPrivilege: gobmc.PrivilegeLevelAdministrator, Enabled: true}
	}

	reg := handlers.NewRegistry()
	reg.Use(s.middleware) // before registration: Use is not retroactive
	handlers.RegisterAllHandlers(reg)
	reg.RegisterFunc(types.CommandChassisControl, s.chassisControl)
	reg.RegisterFunc(types.CommandSetSystemBootOptions, s.setBootOptions)
	reg.RegisterFunc(types.CommandGetSystemBootOptions, s.getBootOptions)

	s.conn = &faultConn{conn: conn, faults: b.faults}
	s.srv = server.NewServer(s.gb, s.conn, server.WithHandlerRegistry(reg))
	return s
}

func (s *ipmiServer) serve(ctx context.Context) error {
	err := s.srv.Serve(ctx)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func (s *ipmiServer) close() { s.srv.Close() }

// middleware notes sessions (for DropSessions) and applies faults to
// chassis commands.
func (s *ipmiServer) middleware(next handlers.Handler) handlers.Handler {
	return handlers.HandlerFunc(func(ctx context.Context, hctx *handlers.HandlerContext, req []byte) ([]byte, types.CompletionCode, error) {
		if hctx != nil {
			s.mu.Lock()
			if hctx.Session != nil {
				s.sessions[hctx.Session.BMCID] = true
			}
			if hctx.V15Session != nil {
				s.v15[hctx.V15Session.SessionID] = true
			}
			s.mu.Unlock()
			if hctx.Command.NetFn == types.NetFnChassisRequest {
				if cc, failed := s.fault(); failed {
					return nil, cc, nil
				}
			}
		}
		return next.Handle(ctx, hctx, req)
	})
}

// fault applies latency and errors to one chassis command. Hangs are the
// transport's business (no packet is answered), but a hang switched on
// while this command was in flight holds it too.
func (s *ipmiServer) fault() (types.CompletionCode, bool) {
	for {
		f := s.b.faults.take(ProtocolIPMI)
		if f.hang {
			select {
			case <-f.changed:
				continue
			case <-s.b.ctx.Done():
				return types.CodeNodeBusy, true
			}
		}
		if f.latency > 0 {
			t := time.NewTimer(f.latency)
			select {
			case <-t.C:
			case <-s.b.ctx.Done():
				t.Stop()
				return types.CodeNodeBusy, true
			}
		}
		if f.fail {
			return types.CompletionCode(f.code), true
		}
		return 0, false
	}
}

// dropSessions closes every session seen so far; returns how many.
func (s *ipmiServer) dropSessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for id := range s.sessions {
		if s.gb.Sessions.Close(id) == nil {
			n++
		}
		delete(s.sessions, id)
	}
	for id := range s.v15 {
		if s.gb.V15Sessions.Close(id) == nil {
			n++
		}
		delete(s.v15, id)
	}
	return n
}

// completion maps a power operation's error to a completion code.
func completion(err error) types.CompletionCode {
	switch {
	case err == nil:
		return types.CodeOK
	case errors.Is(err, ErrPoweredOff):
		return types.CodeNotSupported // D5h: not supported in present state
	case errors.Is(err, context.DeadlineExceeded):
		return types.CodeProcessTimeout
	}
	var cc types.CompletionCode
	if errors.As(err, &cc) {
		return cc
	}
	return types.CodeUnspecifiedError
}

// chassisControl implements Chassis Control (IPMI 2.0 §28.3). Power
// cycle and hard reset of a machine that is off answer D5h, as the
// specification recommends.
func (s *ipmiServer) chassisControl(_ context.Context, _ *handlers.HandlerContext, req []byte) ([]byte, types.CompletionCode, error) {
	var r chassis.ChassisControlRequest
	if err := r.Unpack(req); err != nil {
		return nil, types.CodeRequestDataTruncated, nil
	}
	ctx, cancel := s.b.opCtx()
	defer cancel()
	var err error
	switch r.ChassisControl {
	case chassis.ChassisControlPowerDown:
		err = s.b.powerOff(ctx, true)
	case chassis.ChassisControlPowerUp:
		err = s.b.powerOn(ctx)
	case chassis.ChassisControlPowerCycle:
		err = s.b.cycle(ctx, false)
	case chassis.ChassisControlHardReset:
		err = s.b.reset(ctx, false)
	case chassis.ChassisControlSoftShutdown:
		err = s.b.powerOff(ctx, false)
	default: // diagnostic interrupt (NMI) is not implemented
		return nil, types.CodeParameterOutOfRange, nil
	}
	if err != nil {
		s.b.log.Warn("IPMI chassis control failed", "action", r.ChassisControl, "err", err)
	}
	return nil, completion(err), nil
}

// Boot option parameter selectors (IPMI 2.0 Table 28-14).
const (
	bootParamSetInProgress = 0
	bootParamValidBitClear = 3
	bootParamInfoAck       = 4
	bootParamFlags         = 5
)

// setBootOptions implements Set System Boot Options (§28.12) for the
// parameters clients use to choose the boot device.
func (s *ipmiServer) setBootOptions(_ context.Context, _ *handlers.HandlerContext, req []byte) ([]byte, types.CompletionCode, error) {
	if len(req) < 1 {
		return nil, types.CodeRequestDataTruncated, nil
	}
	data := req[1:]
	switch req[0] & 0x7f {
	case bootParamSetInProgress, bootParamValidBitClear:
		return nil, types.CodeOK, nil // accepted; parameters apply at once and never auto-clear
	case bootParamInfoAck:
		if len(data) == 0 {
			return nil, types.CodeOK, nil
		}
		var ack types.BootOptionParam_BootInfoAcknowledge
		if err := ack.Unpack(data); err != nil {
			return nil, types.CodeRequestDataTruncated, nil
		}
		s.mu.Lock()
		s.bootAck = &ack
		s.mu.Unlock()
		return nil, types.CodeOK, nil
	case bootParamFlags:
		if len(data) == 0 {
			return nil, types.CodeOK, nil
		}
		var f types.BootOptionParam_BootFlags
		if err := f.Unpack(data); err != nil {
			return nil, types.CodeRequestDataTruncated, nil
		}
		boot, ok := bootFromFlags(&f)
		if !ok {
			return nil, types.CodeRequestDataFieldInvalid, nil
		}
		if err := s.b.SetBoot(boot); err != nil {
			return nil, types.CodeRequestDataFieldInvalid, nil
		}
		return nil, types.CodeOK, nil
	}
	return nil, types.CodeParameterNotSupported, nil
}

// getBootOptions implements Get System Boot Options (§28.13).
func (s *ipmiServer) getBootOptions(_ context.Context, _ *handlers.HandlerContext, req []byte) ([]byte, types.CompletionCode, error) {
	if len(req) < 1 {
		return nil, types.CodeRequestDataTruncated, nil
	}
	param := req[0] & 0x7f
	resp := []byte{0x01, param} // parameter version 1; parameter valid
	switch param {
	case bootParamSetInProgress:
		return append(resp, 0x00), types.CodeOK, nil // set complete
	case bootParamValidBitClear:
		return append(resp, 0x00), types.CodeOK, nil
	case bootParamInfoAck:
		s.mu.Lock()
		ack := s.bootAck
		s.mu.Unlock()
		if ack == nil {
			ack = &types.BootOptionParam_BootInfoAcknowledge{}
		}
		return append(resp, ack.Pack()...), types.CodeOK, nil
	case bootParamFlags:
		return append(resp, flagsFromBoot(s.b.Boot()).Pack()...), types.CodeOK, nil
	}
	return nil, types.CodeParameterNotSupported, nil
}

// bootFromFlags maps IPMI boot flags onto a Boot; false for a device the
// virtual BMC can't boot from.
func bootFromFlags(f *types.BootOptionParam_BootFlags) (Boot, bool) {
	b := Boot{Enabled: BootDisabled, UEFI: f.BIOSBootType == types.BIOSBootTypeEFI}
	switch f.BootDeviceSelector {
	case types.BootDeviceSelectorNoOverride:
		b.Target = TargetNone
	case types.BootDeviceSelectorForcePXE:
		b.Target = TargetPxe
	case types.BootDeviceSelectorForceHardDrive, types.BootDeviceSelectorForceHardDriveSafe:
		b.Target = TargetHdd
	default:
		return Boot{}, false
	}
	if f.BootFlagsValid {
		b.Enabled = BootOnce
		if f.Persist {
			b.Enabled = BootContinuous
		}
	}
	return b, true
}

func flagsFromBoot(b Boot) *types.BootOptionParam_BootFlags {
	f := &types.BootOptionParam_BootFlags{
		BootFlagsValid: b.Enabled != BootDisabled,
		Persist:        b.Enabled == BootContinuous,
		BIOSBootType:   types.BIOSBootType(b.UEFI),
	}
	switch b.Target {
	case TargetPxe:
		f.BootDeviceSelector = types.BootDeviceSelectorForcePXE
	case TargetHdd:
		f.BootDeviceSelector = types.BootDeviceSelectorForceHardDrive
	}
	return f
}

// ipmiHAL is go-ipmi's view of the hardware: a chassis, nothing else.
type ipmiHAL struct{ s *ipmiServer }

func (h ipmiHAL) Chassis() hal.ChassisHAL { return ipmiChassis(h) }
func (ipmiHAL) Sensors() hal.SensorHAL    { return nil }
func (ipmiHAL) Storage() hal.StorageHAL   { return nil }
func (ipmiHAL) Network() hal.NetworkHAL   { return nil }
func (ipmiHAL) GPIO() hal.GPIOHAL         { return nil }
func (ipmiHAL) I2C() hal.I2CHAL           { return nil }
func (ipmiHAL) Console() hal.ConsoleHAL   { return nil }
func (ipmiHAL) Close() error              { return nil }

// ipmiChassis serves go-ipmi's own chassis handlers (Get Chassis Status,
// Chassis Identify); Chassis Control and the boot options are handled
// above.
type ipmiChassis struct{ s *ipmiServer }

func (c ipmiChassis) PowerState(context.Context) (bool, error) {
	ctx, cancel := c.s.b.opCtx()
	defer cancel()
	st, err := c.s.b.state(ctx)
	return st == On, err
}

func (c ipmiChassis) SetPower(_ context.Context, on bool) error {
	ctx, cancel := c.s.b.opCtx()
	defer cancel()
	if on {
		return c.s.b.powerOn(ctx)
	}
	return c.s.b.powerOff(ctx, true)
}

func (c ipmiChassis) PowerCycle(context.Context) error {
	ctx, cancel := c.s.b.opCtx()
	defer cancel()
	return c.s.b.cycle(ctx, false)
}

func (c ipmiChassis) ColdReset(context.Context) error {
	ctx, cancel := c.s.b.opCtx()
	defer cancel()
	return c.s.b.reset(ctx, false)
}

func (c ipmiChassis) WarmReset(ctx context.Context) error { return c.ColdReset(ctx) }

func (ipmiChassis) Identify(context.Context, uint8) error { return nil }
func (ipmiChassis) IntrusionState(context.Context) (bool, error) {
	return false, hal.ErrNotSupported
}

func (c ipmiChassis) SetBootFlags(_ context.Context, f *types.BootOptionParam_BootFlags) error {
	boot, ok := bootFromFlags(f)
	if !ok {
		return types.CodeRequestDataFieldInvalid
	}
	return c.s.b.SetBoot(boot)
}

func (c ipmiChassis) GetBootFlags(context.Context) (*types.BootOptionParam_BootFlags, error) {
	return flagsFromBoot(c.s.b.Boot()), nil
}

func (c ipmiChassis) SetBootInfoAcknowledge(_ context.Context, ack *types.BootOptionParam_BootInfoAcknowledge) error {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	c.s.bootAck = ack
	return nil
}

func (c ipmiChassis) GetBootInfoAcknowledge(context.Context) (*types.BootOptionParam_BootInfoAcknowledge, error) {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	if c.s.bootAck == nil {
		return &types.BootOptionParam_BootInfoAcknowledge{}, nil
	}
	return c.s.bootAck, nil
}

// faultConn is the UDP transport; while a hang is in effect it reads and
// drops every packet, so nothing is answered.
type faultConn struct {
	conn   *net.UDPConn
	faults *faultState
}

func (c *faultConn) ReadFrom(buf []byte) (int, net.Addr, error) {
	for {
		n, addr, err := c.conn.ReadFromUDP(buf)
		if err != nil {
			return n, addr, err
		}
		if c.faults.hanging(ProtocolIPMI) {
			continue
		}
		return n, addr, nil
	}
}

func (c *faultConn) WriteTo(data []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, net.InvalidAddrError("not a UDP address")
	}
	return c.conn.WriteToUDP(data, ua)
}

func (c *faultConn) Close() error { return c.conn.Close() }

// LocalAddr lets go-ipmi learn its port (for SOL payload activation).
func (c *faultConn) LocalAddr() net.Addr { return c.conn.LocalAddr() }
