package power

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/bougou/go-ipmi/pkg/client"
	"github.com/bougou/go-ipmi/pkg/command/chassis"
	"github.com/bougou/go-ipmi/pkg/types"
)

// The IPMI driver speaks IPMI over LAN through go-ipmi (pure Go, no
// ipmitool on the rack host).
//
// Target.Address is "host", "host:port", "[v6]" or "[v6]:port" (a bare
// IPv6 literal is accepted too); the port defaults to 623.
//
// Options (unknown keys are ignored):
//
//	interface   "lanplus" (IPMI 2.0 / RMCP+, the default), "lan" (IPMI 1.5)
//	            or "auto": ask the BMC (Get Channel Authentication
//	            Capabilities) and use 2.0 when it supports it, 1.5 when it
//	            does not.
//	cipherSuite IPMI 2.0 cipher suite ID, 1-19, or several separated by
//	            commas, tried in that order. Default: 17 (HMAC-SHA256,
//	            AES-128) then 3 (HMAC-SHA1, AES-128, which every IPMI 2.0
//	            BMC must implement), go-ipmi's two first choices: the
//	            strongest suite the BMC accepts among those that
//	            authenticate and encrypt every message. Other suites only
//	            when named (go-ipmi 0.9.1 interoperates with ipmi_sim on
//	            suite 3 only). Suite 0, which authenticates nothing, is
//	            refused. The next suite is tried only when the BMC refuses
//	            to open a session with one, never after a rejected
//	            password, so a wrong password does not leave a half-open
//	            session per suite on the BMC.
//	privilege   session privilege: OPERATOR is enough for everything this
//	            driver does (chassis control, boot options), USER only for
//	            Status; ADMINISTRATOR, OEM. Default: ADMINISTRATOR, and
//	            OPERATOR when the BMC refuses ADMINISTRATOR to the account
//	            (also when the RAKP check fails, since some BMCs answer a
//	            privilege above the account's like a wrong password: a
//	            wrong password then costs two session attempts).
//	disableBootTimeout "true" (default) or "false". IPMI has the BMC clear
//	            the boot flags 60 s after they are set unless the machine
//	            restarts; by default SetBoot turns that timer off (boot
//	            option parameter 3, as OpenStack Ironic does) so a boot
//	            device set before a retried or delayed power action is not
//	            lost. Best effort: BMCs without the parameter are fine.
//
// Operations:
//
//	PowerOn     Chassis Control "power up"; nothing when already on.
//	PowerOff    soft: Chassis Control "soft shutdown" (the BMC asks the OS
//	            for an ACPI shutdown; poll Status to see it finish); hard:
//	            Chassis Control "power down". Nothing when already off.
//	PowerCycle  Chassis Control "power cycle" when on; "power up" when off,
//	            since many BMCs refuse to cycle a chassis that is off (also
//	            when the BMC refuses the cycle and the chassis turns out to
//	            be off by then).
//	Status      Get Chassis Status, "power is on" bit.
//	SetBoot     Set System Boot Options: take the "set in progress" lock
//	            (parameter 0) when the BMC has it, releasing first a lock
//	            an interrupted earlier call left behind; disable the 60 s
//	            timeout (parameter 3); Boot Info Acknowledge (parameter 4,
//	            as ipmitool does); boot flags (parameter 5): valid, next
//	            boot only or persistent, legacy or EFI, Force PXE or Force
//	            boot from default hard drive; "set complete".
//
// The session is opened on the first call and reused; go-ipmi keeps it
// alive while the driver is open. When a call on a reused session gets no
// answer (BMCs drop sessions after inactivity or a reset), the driver opens
// a new session once and repeats the call (so a power cycle whose reply was
// lost may be sent twice). go-ipmi's per-packet timeout is chosen from the
// context's deadline when the session is opened (an eighth of the time
// left, 100 ms to 1 s; 4 packets); the context bounds every call.
//
// Errors are plain wrapped errors (the caller wraps them in OpError) and
// never contain the password:
//
//   - rejected password, unknown or disabled user, refused privilege,
//     "insufficient privilege" (0xD4): ErrAuth, permanent.
//   - completion codes: the error names the command and the code.
//     ErrUnsupported (permanent): invalid command (0xC1, 0xC2), illegal
//     command (0xCD), sub-function disabled (0xD6), parameter out of range
//     or invalid data field (0xC9, 0xCC: for a well-formed request, the BMC
//     does not do what was asked), boot option parameter not supported
//     (0x80). Permanent: bad request length (0xC6-0xC8), read-only boot
//     option parameter (0x82). Transient: node busy (0xC0), timeout
//     (0xC3), out of space (0xC4), reservation cancelled (0xC5), data not
//     available (0xCA, 0xCB), cannot respond now (0xCE, 0xD0-0xD2),
//     duplicate request (0xCF), destination unavailable (0xD3), not
//     supported in the present state (0xD5: the state may change),
//     unspecified (0xFF), boot options set in progress by another party
//     (0x81), and any other code.
//   - a cipher suite the BMC refuses: ErrUnsupported when named in the
//     options; with the default suites, which include the mandatory 3, a
//     refusal more likely means no free session: transient.
//   - no answer, refused or unreachable address, name not resolved,
//     malformed reply: transient.
//   - an invalid address or option: permanent, from newIPMI.

const ipmiDefaultPort = 623

// ipmiAutoSuites are the cipher suites tried when none is configured.
var ipmiAutoSuites = []types.CipherSuiteID{17, 3}

// Boot device selectors and option parameters (IPMI 2.0 table 28-14).
const (
	ipmiBootPXE  = 0x1 // Force PXE
	ipmiBootDisk = 0x2 // Force boot from default hard drive

	ipmiParamSetInProgress   = 0
	ipmiParamValidBitClear   = 3
	ipmiParamBootInfoAck     = 4
	ipmiParamBootFlags       = 5
	ipmiSetComplete          = 0x00
	ipmiSetInProgress        = 0x01
	ipmiNoBootFlagTimeout    = 0x08 // parameter 3 bit 3: no 60 s clearing
	ipmiBootFlagsValid       = 0x80
	ipmiBootFlagsPersistent  = 0x40
	ipmiBootFlagsEFI         = 0x20
	ipmiBootInfoAckBIOSMask  = 0x01
	ipmiBootInfoAckBIOSUnack = 0x01
)

type ipmiDriver struct {
	t           Target
	addr        string // host:port, for messages
	host        string // as go-ipmi wants it: IPv6 literals in brackets
	port        int
	iface       string
	suites      []types.CipherSuiteID
	suitesSet   bool // named in the options
	priv        types.PrivilegeLevel
	privSet     bool
	bootTimeout bool // disable the 60 s boot flag timeout

	c *client.Client // nil until connected
}

// newIPMI is the power.Factory of the IPMI driver.
func newIPMI(t Target) (Driver, error) {
	d := &ipmiDriver{t: t, iface: "lanplus", priv: types.PrivilegeLevelAdministrator, bootTimeout: true}
	host, port, err := ipmiParseAddress(t.Address)
	if err != nil {
		return nil, Permanent(err)
	}
	d.port = port
	d.host = host
	d.addr = net.JoinHostPort(host, strconv.Itoa(port))
	if strings.Contains(host, ":") {
		// go-ipmi formats "%s:%d" itself.
		d.host = "[" + host + "]"
	}
	if len(t.Username) > 16 {
		return nil, Permanent(fmt.Errorf("ipmi: user name %q is longer than the 16 bytes IPMI allows", t.Username))
	}
	opt := func(k string) string { return strings.TrimSpace(t.Options[k]) }

	switch v := strings.ToLower(opt("interface")); v {
	case "", "lanplus":
	case "lan", "auto":
		d.iface = v
	default:
		return nil, Permanent(fmt.Errorf("ipmi: option interface %q: want lanplus, lan or auto", v))
	}

	d.suites = ipmiAutoSuites
	if v := opt("cipherSuite"); v != "" {
		d.suites = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 0 || n > 19 {
				return nil, Permanent(fmt.Errorf("ipmi: option cipherSuite %q: want cipher suite IDs 1-19", v))
			}
			if n == 0 {
				return nil, Permanent(fmt.Errorf("ipmi: option cipherSuite %q: suite 0 has no authentication and is refused", v))
			}
			d.suites = append(d.suites, types.CipherSuiteID(n))
		}
		d.suitesSet = true
	}

	if v := opt("privilege"); v != "" {
		switch strings.ToUpper(v) {
		case "USER":
			d.priv = types.PrivilegeLevelUser
		case "OPERATOR":
			d.priv = types.PrivilegeLevelOperator
		case "ADMINISTRATOR", "ADMIN":
			d.priv = types.PrivilegeLevelAdministrator
		case "OEM":
			d.priv = types.PrivilegeLevelOEM
		default:
			return nil, Permanent(fmt.Errorf("ipmi: option privilege %q: want USER, OPERATOR, ADMINISTRATOR or OEM", v))
		}
		d.privSet = true
	}

	if v := opt("disableBootTimeout"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, Permanent(fmt.Errorf("ipmi: option disableBootTimeout %q: want true or false", v))
		}
		d.bootTimeout = b
	}
	return d, nil
}

// ipmiParseAddress splits "host", "host:port", "[v6]", "[v6]:port" or a
// bare IPv6 literal.
func ipmiParseAddress(a string) (string, int, error) {
	a = strings.TrimSpace(a)
	host, port := a, ""
	switch {
	case a == "":
		return "", 0, errors.New("ipmi: empty BMC address")
	case strings.HasPrefix(a, "["):
		if strings.HasSuffix(a, "]") {
			host = a[1 : len(a)-1]
			break
		}
		h, p, err := net.SplitHostPort(a)
		if err != nil {
			return "", 0, fmt.Errorf("ipmi: BMC address %q: want host, host:port or [ipv6]:port", a)
		}
		host, port = h, p
	case strings.Count(a, ":") > 1:
		if net.ParseIP(a) == nil {
			return "", 0, fmt.Errorf("ipmi: BMC address %q: want host, host:port or [ipv6]:port", a)
		}
	case strings.Contains(a, ":"):
		h, p, err := net.SplitHostPort(a)
		if err != nil {
			return "", 0, fmt.Errorf("ipmi: BMC address %q: want host, host:port or [ipv6]:port", a)
		}
		host, port = h, p
	}
	if host == "" || strings.ContainsAny(host, "/ []") {
		return "", 0, fmt.Errorf("ipmi: BMC address %q: want host, host:port or [ipv6]:port", a)
	}
	n := ipmiDefaultPort
	if port != "" {
		var err error
		n, err = strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			return "", 0, fmt.Errorf("ipmi: BMC address %q: bad port", a)
		}
	}
	return host, n, nil
}

// --- session handling -------------------------------------------------

// do runs fn on a session, opening one when there is none, and once more
// on a new session when a reused one seems to have been dropped.
func (d *ipmiDriver) do(ctx context.Context, fn func(c *client.Client) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	fresh := false
	if d.c == nil {
		if err := d.connect(ctx); err != nil {
			return d.scrub(err)
		}
		fresh = true
	}
	err := fn(d.c)
	if err == nil || fresh || !ipmiSessionMayBeLost(ctx, err) {
		return d.scrub(err)
	}
	// No answer on a session that worked before: the BMC has most likely
	// dropped it (idle timeout, BMC reset). Open a new one and try again.
	d.drop()
	if cerr := d.connect(ctx); cerr != nil {
		return d.scrub(fmt.Errorf("%w (after: %v)", cerr, err))
	}
	return d.scrub(fn(d.c))
}

// ipmiSessionMayBeLost: the BMC did not give a real answer, and neither the
// caller nor the classification says to stop.
func ipmiSessionMayBeLost(ctx context.Context, err error) bool {
	var cc *ipmiCCError
	return ctx.Err() == nil && !errors.As(err, &cc) && !errors.Is(err, ErrPermanent)
}

// errIPMIPrivilege marks a refused privilege level, so that the default
// ADMINISTRATOR can fall back to OPERATOR.
var errIPMIPrivilege = errors.New("privilege level refused")

// errIPMIRAKP marks a failed RAKP check: a wrong password, or (ipmi_sim
// does this) a privilege level above the account's.
var errIPMIRAKP = errors.New("RAKP key exchange check failed")

// errIPMISuite marks a cipher suite the BMC does not support.
var errIPMISuite = errors.New("cipher suite refused")

func (d *ipmiDriver) connect(ctx context.Context) error {
	err := d.connectAt(ctx, d.priv)
	if err != nil && !d.privSet && ctx.Err() == nil && (errors.Is(err, errIPMIPrivilege) || errors.Is(err, errIPMIRAKP)) {
		// The default ADMINISTRATOR was refused; OPERATOR is enough.
		err = d.connectAt(ctx, types.PrivilegeLevelOperator)
	}
	return err
}

func (d *ipmiDriver) connectAt(ctx context.Context, priv types.PrivilegeLevel) error {
	suites := d.suites
	if d.iface == "lan" {
		suites = suites[:1] // unused by IPMI 1.5: one attempt
	}
	var err error
	for _, suite := range suites {
		var c *client.Client
		c, err = client.NewClient(d.host, d.port, d.t.Username, d.t.Password)
		if err != nil {
			return Permanent(fmt.Errorf("ipmi: %v", err))
		}
		timeout, retries := ipmiBudget(ctx)
		c.WithTimeout(timeout).WithRetry(retries).WithMaxPrivilegeLevel(priv).WithCipherSuiteID(suite)
		switch d.iface {
		case "lan":
			err = c.WithInterface(client.InterfaceLan).Connect(ctx)
		case "auto":
			err = c.ConnectAuto(ctx)
		default:
			err = c.WithInterface(client.InterfaceLanplus).Connect(ctx)
		}
		if err == nil {
			d.c = c
			return nil
		}
		ipmiDiscard(c)
		err = d.connectError(ctx, err, suite, priv)
		if !errors.Is(err, errIPMISuite) || ctx.Err() != nil {
			return err
		}
	}
	if len(suites) > 1 {
		err = fmt.Errorf("ipmi: BMC %s refused sessions with cipher suites %v; last: %w", d.addr, suites, err)
	}
	return err
}

// ipmiBudget picks go-ipmi's per-packet timeout and retransmissions: at
// most 1 s per packet and 4 packets, fewer when the deadline is close, so
// that a dropped session is noticed with time left to open a new one.
func ipmiBudget(ctx context.Context) (time.Duration, int) {
	timeout := time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(max(time.Until(dl)/8, 100*time.Millisecond), time.Second)
	}
	return timeout, 3
}

// ipmiDiscard closes a client without talking to the BMC: it stops
// go-ipmi's keep-alive and closes the socket. In the background, because
// go-ipmi holds its socket until an abandoned read's deadline passes
// (at most the 1 s packet timeout).
func ipmiDiscard(c *client.Client) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	go func() { _ = c.Close(ctx) }()
}

func (d *ipmiDriver) drop() {
	if d.c != nil {
		ipmiDiscard(d.c)
		d.c = nil
	}
}

// Close closes the session. It does not fail: a BMC that misses the Close
// Session command expires the session itself.
func (d *ipmiDriver) Close() error {
	if d.c == nil {
		return nil
	}
	c := d.c
	d.c = nil
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = c.Close(ctx)
	return nil
}

// scrub removes the password from an error's text, should a library or
// BMC ever echo it.
func (d *ipmiDriver) scrub(err error) error {
	if err == nil || len(d.t.Password) < 3 || !strings.Contains(err.Error(), d.t.Password) {
		return err
	}
	return &ipmiScrubbed{msg: redact(err.Error(), d.t.Password), err: err}
}

type ipmiScrubbed struct {
	msg string
	err error
}

func (e *ipmiScrubbed) Error() string { return e.msg }
func (e *ipmiScrubbed) Unwrap() error { return e.err }

// connectError classifies a failed session setup. go-ipmi formats some
// of its errors with %v, so the RMCP+ status and RAKP failures are also
// recognised by their text, which go-ipmi itself produces.
func (d *ipmiDriver) connectError(ctx context.Context, err error, suite types.CipherSuiteID, priv types.PrivilegeLevel) error {
	msg := err.Error()
	who := fmt.Sprintf("user %q at BMC %s", d.t.Username, d.addr)
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("ipmi: opening a session with BMC %s: %w (%s)", d.addr, cerr, msg)
	}
	if errors.Is(err, client.ErrRAKPAuthentication) || strings.Contains(msg, client.ErrRAKPAuthentication.Error()) {
		if priv > types.PrivilegeLevelOperator {
			return fmt.Errorf("ipmi: %s: %w: password rejected, or privilege %s not allowed (%w)", who, ErrAuth, priv, errIPMIRAKP)
		}
		return fmt.Errorf("ipmi: %s: %w: password rejected (%w)", who, ErrAuth, errIPMIRAKP)
	}
	if st, ok := ipmiRmcpStatus(err); ok {
		switch st {
		case types.RmcpStatusCodeUnauthorizedName, types.RmcpStatusCodeInvalidNameLength:
			return fmt.Errorf("ipmi: %s: %w: unknown user (RMCP+ status 0x%02X: %s)", who, ErrAuth, uint8(st), st)
		case types.RmcpStatusCodeInvalidIntegrityCheckValue:
			return fmt.Errorf("ipmi: %s: %w: password rejected (RMCP+ status 0x%02X: %s)", who, ErrAuth, uint8(st), st)
		case types.RmcpStatusCodeInvalidRole, types.RmcpStatusCodeUnauthorizedRoleOfPriLevel:
			return fmt.Errorf("ipmi: %s: %w: %w: privilege %s refused (RMCP+ status 0x%02X: %s); set option privilege", who, ErrAuth, errIPMIPrivilege, priv, uint8(st), st)
		case types.RmcpStatusCodeInvalidAuthAlg, types.RmcpStatusCodeInvalidIntegrityAlg,
			types.RmcpStatusCodeNoMatchingAuthPayload, types.RmcpStatusCodeNoMatchingIntegrityPayload,
			types.RmcpStatusCodeInvalidConfidentAlg, types.RmcpStatusCodeNoCipherSuiteMatch:
			return fmt.Errorf("ipmi: BMC %s: cipher suite %d: %w: %w (RMCP+ status 0x%02X: %s)", d.addr, suite, errIPMISuite, ErrUnsupported, uint8(st), st)
		default:
			// Out of sessions, invalid session ID, ...: try again later.
			return fmt.Errorf("ipmi: opening a session with BMC %s: RMCP+ status 0x%02X: %s", d.addr, uint8(st), st)
		}
	}
	if strings.Contains(msg, "RMCP+ Open Session failed") && strings.Contains(msg, "unpack session setup response failed") {
		// The BMC answered Open Session with a bare status (ipmi_sim does
		// for a suite it lacks) that go-ipmi cannot decode: refused, but
		// whether for the suite or for want of a free session is unknown.
		// A suite named in the options is most likely unsupported; the
		// default ones include 3, which every BMC must have, so refusing
		// them all looks like a full session table: transient.
		if d.suitesSet {
			return fmt.Errorf("ipmi: BMC %s refused RMCP+ Open Session with cipher suite %d: %w: %w", d.addr, suite, errIPMISuite, ErrUnsupported)
		}
		return fmt.Errorf("ipmi: BMC %s refused RMCP+ Open Session with cipher suite %d (suite unsupported or no free session): %w", d.addr, suite, errIPMISuite)
	}
	if re, ok := types.IsResponseError(err); ok && re.CompletionCode() != 0 {
		cc := re.CompletionCode()
		switch {
		case strings.Contains(msg, "GetSessionChallenge") && (cc == 0x81 || cc == 0x82):
			return fmt.Errorf("ipmi: %s: %w: unknown user or user disabled (Get Session Challenge completion code 0x%02X)", who, ErrAuth, uint8(cc))
		case strings.Contains(msg, "ActivateSession") && cc == 0x86,
			strings.Contains(msg, "SetSessionPrivilegeLevel") && (cc == 0x80 || cc == 0x81),
			cc == types.CodeInsufficientPrivilege:
			return fmt.Errorf("ipmi: %s: %w: %w: privilege %s refused (completion code 0x%02X); set option privilege", who, ErrAuth, errIPMIPrivilege, priv, uint8(cc))
		}
		return ipmiCommandError("session setup", nil, err)
	}
	if strings.Contains(msg, "anonymous login is not enabled") {
		return fmt.Errorf("ipmi: BMC %s: %w: a user name is required", d.addr, ErrAuth)
	}
	if strings.Contains(msg, "ActivateSession failed") && ipmiNoAnswer(err) {
		// IPMI 1.5: the BMC answered Get Session Challenge for this user
		// but ignores Activate Session, which is how BMCs (ipmi_sim among
		// them) treat a wrong password's auth code.
		return fmt.Errorf("ipmi: %s: %w: password rejected (no answer to IPMI 1.5 Activate Session)", who, ErrAuth)
	}
	return fmt.Errorf("ipmi: opening a session with BMC %s: %w", d.addr, err)
}

// ipmiRmcpStatus finds the RMCP+ status code of a failed session setup.
func ipmiRmcpStatus(err error) (types.RmcpStatusCode, bool) {
	var se *types.RmcpStatusError
	if errors.As(err, &se) {
		return se.StatusCode(), true
	}
	msg := err.Error()
	for st := types.RmcpStatusCode(1); st <= 0x12; st++ {
		if strings.Contains(msg, types.NewRmcpStatusError(st).Error()) {
			return st, true
		}
	}
	return 0, false
}

// ipmiNoAnswer: the BMC did not answer (timeouts and unmatched replies).
func ipmiNoAnswer(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "timed out") || strings.Contains(msg, "no matching IPMI response") || strings.Contains(msg, "no UDP datagram matched")
}

// --- completion codes ---------------------------------------------------

// ipmiCCError is a command the BMC answered with a completion code other
// than success. kind is nil for transient codes, else ErrPermanent,
// ErrUnsupported or ErrAuth.
type ipmiCCError struct {
	cmd  string
	code uint8
	desc string
	kind error
}

func (e *ipmiCCError) Error() string {
	s := fmt.Sprintf("ipmi %s: BMC answered completion code 0x%02X (%s)", e.cmd, e.code, e.desc)
	switch {
	case e.kind == nil:
	case errors.Is(e.kind, ErrAuth):
		s += ": " + ErrAuth.Error()
	case errors.Is(e.kind, ErrUnsupported):
		s += ": " + ErrUnsupported.Error()
	default:
		s += ": " + ErrPermanent.Error()
	}
	return s
}

func (e *ipmiCCError) Unwrap() error { return e.kind }

// ipmiCCKind classifies a completion code; specific gives command-specific
// codes (80h-BEh) their meaning for the command at hand.
func ipmiCCKind(code uint8, specific map[uint8]error) error {
	if k, ok := specific[code]; ok {
		return k
	}
	switch code {
	case 0xC1, 0xC2, 0xCD, 0xD6, 0xC9, 0xCC:
		// invalid or illegal command, sub-function disabled; parameter out
		// of range or invalid data field for a well-formed request: the
		// BMC does not do this.
		return ErrUnsupported
	case 0xC6, 0xC7, 0xC8:
		// request truncated, length invalid or too long: a bug, not the
		// network.
		return ErrPermanent
	case 0xD4:
		return ErrAuth // insufficient privilege
	}
	// 0xC0 busy, 0xC3 timeout, 0xC4 out of space, 0xC5 reservation
	// cancelled, 0xCA/0xCB data not available, 0xCE/0xD0-0xD2 cannot
	// respond now, 0xCF duplicate, 0xD3 destination unavailable, 0xD5 not
	// in present state, 0xFF unspecified, OEM and unknown codes: transient.
	return nil
}

// Command-specific codes of Set System Boot Options (IPMI 2.0 §28.12).
var ipmiBootOptionCodes = map[uint8]error{
	0x80: ErrUnsupported, // parameter not supported
	0x81: nil,            // set in progress by another party
	0x82: ErrPermanent,   // parameter is read-only
}

// ipmiCommandError turns a failed go-ipmi call into a classified error.
func ipmiCommandError(cmd string, specific map[uint8]error, err error) error {
	if err == nil {
		return nil
	}
	if re, ok := types.IsResponseError(err); ok {
		code := uint8(re.CompletionCode())
		if code == 0 {
			// go-ipmi could not decode a successful reply.
			return fmt.Errorf("ipmi %s: malformed reply: %w", cmd, err)
		}
		desc := types.CompletionCode(code).String()
		if s := ipmiSpecificName(cmd, code); s != "" {
			desc = s
		}
		return &ipmiCCError{cmd: cmd, code: code, desc: desc, kind: ipmiCCKind(code, specific)}
	}
	return fmt.Errorf("ipmi %s: %w", cmd, err)
}

func ipmiSpecificName(cmd string, code uint8) string {
	if strings.HasPrefix(cmd, "Set System Boot Options") {
		return types.StrCC(types.CommandSetSystemBootOptions, code)
	}
	return ""
}

// --- operations ---------------------------------------------------------

func (d *ipmiDriver) control(ctx context.Context, c *client.Client, ctl chassis.ChassisControl, what string) error {
	_, err := c.ChassisControl(ctx, ctl)
	return ipmiCommandError("Chassis Control ("+what+")", nil, err)
}

func (d *ipmiDriver) powerIsOn(ctx context.Context, c *client.Client) (bool, error) {
	r, err := c.GetChassisStatus(ctx)
	if err != nil {
		return false, ipmiCommandError("Get Chassis Status", nil, err)
	}
	return r.PowerIsOn, nil
}

// PowerOn powers the chassis up unless it is on.
func (d *ipmiDriver) PowerOn(ctx context.Context) error {
	return d.do(ctx, func(c *client.Client) error {
		on, err := d.powerIsOn(ctx, c)
		if err != nil || on {
			return err
		}
		return d.control(ctx, c, chassis.ChassisControlPowerUp, "power up")
	})
}

// PowerOff asks for an ACPI shutdown, or powers down at once when hard.
func (d *ipmiDriver) PowerOff(ctx context.Context, hard bool) error {
	return d.do(ctx, func(c *client.Client) error {
		on, err := d.powerIsOn(ctx, c)
		if err != nil || !on {
			return err
		}
		if hard {
			return d.control(ctx, c, chassis.ChassisControlPowerDown, "power down")
		}
		return d.control(ctx, c, chassis.ChassisControlSoftShutdown, "soft shutdown")
	})
}

// PowerCycle cycles power, or powers up a chassis that is off.
func (d *ipmiDriver) PowerCycle(ctx context.Context) error {
	return d.do(ctx, func(c *client.Client) error {
		on, err := d.powerIsOn(ctx, c)
		if err != nil {
			return err
		}
		if !on {
			return d.control(ctx, c, chassis.ChassisControlPowerUp, "power up")
		}
		err = d.control(ctx, c, chassis.ChassisControlPowerCycle, "power cycle")
		var cc *ipmiCCError
		if errors.As(err, &cc) && ctx.Err() == nil {
			// Refused: maybe it went off in between.
			if on, serr := d.powerIsOn(ctx, c); serr == nil && !on {
				return d.control(ctx, c, chassis.ChassisControlPowerUp, "power up")
			}
		}
		return err
	})
}

// Status reads the chassis power state.
func (d *ipmiDriver) Status(ctx context.Context) (State, error) {
	st := Unknown
	err := d.do(ctx, func(c *client.Client) error {
		on, err := d.powerIsOn(ctx, c)
		if err != nil {
			return err
		}
		st = Off
		if on {
			st = On
		}
		return nil
	})
	if err != nil {
		return Unknown, err
	}
	return st, nil
}

// ipmiBootFlags encodes boot option parameter 5 (IPMI 2.0 table 28-14).
func ipmiBootFlags(b Boot) ([]byte, error) {
	var dev byte
	switch b.Device {
	case Network:
		dev = ipmiBootPXE
	case Disk:
		dev = ipmiBootDisk
	default:
		return nil, fmt.Errorf("ipmi: boot device %q: %w", b.Device, ErrUnsupported)
	}
	flags := byte(ipmiBootFlagsValid)
	if b.Persistent {
		flags |= ipmiBootFlagsPersistent
	}
	if b.UEFI {
		flags |= ipmiBootFlagsEFI
	}
	return []byte{flags, dev << 2, 0, 0, 0}, nil
}

func (d *ipmiDriver) setBootParam(ctx context.Context, c *client.Client, what string, param uint8, data ...byte) error {
	_, err := c.SetSystemBootOptionsParam(ctx, &chassis.SetSystemBootOptionsParamRequest{
		ParamSelector: types.BootOptionParamSelector(param),
		ParamData:     data,
	})
	return ipmiCommandError("Set System Boot Options ("+what+")", ipmiBootOptionCodes, err)
}

// SetBoot sets the boot device for the next boot or every boot.
func (d *ipmiDriver) SetBoot(ctx context.Context, b Boot) error {
	flags, err := ipmiBootFlags(b)
	if err != nil {
		return err
	}
	return d.do(ctx, func(c *client.Client) error {
		return ipmiWriteBoot(ctx, func(what string, param uint8, data ...byte) error {
			return d.setBootParam(ctx, c, what, param, data...)
		}, flags, d.bootTimeout)
	})
}

// ipmiWriteBoot writes the boot flags with set, one Set System Boot
// Options command per call.
func ipmiWriteBoot(ctx context.Context, set func(what string, param uint8, data ...byte) error, flags []byte, disableTimeout bool) error {
	// Parameter 0 "set in progress" is optional; IPMI 2.0 §28.12 has
	// writers take it around their changes and release it with "set
	// complete".
	locked := true
	err := set("set in progress", ipmiParamSetInProgress, ipmiSetInProgress)
	var cc *ipmiCCError
	if errors.As(err, &cc) && cc.code == 0x81 {
		// Held: calls to one BMC are serialised, so this is a lock an
		// interrupted earlier call (or a person) left behind. Release it
		// and take it again.
		if err = set("set complete", ipmiParamSetInProgress, ipmiSetComplete); err == nil {
			err = set("set in progress", ipmiParamSetInProgress, ipmiSetInProgress)
		}
	}
	if err != nil {
		if !errors.As(err, &cc) || !errors.Is(err, ErrPermanent) || errors.Is(err, ErrAuth) {
			return err // no answer, busy, still held, not allowed
		}
		// The BMC has no lock (0x80, or 0xCC as ipmi_sim answers): write
		// without it, as ipmitool does.
		locked = false
	}

	err = ipmiWriteBootParams(set, flags, disableTimeout)
	if locked && ctx.Err() == nil {
		if cerr := set("set complete", ipmiParamSetInProgress, ipmiSetComplete); err == nil {
			err = cerr
		}
	}
	return err
}

func ipmiWriteBootParams(set func(what string, param uint8, data ...byte) error, flags []byte, disableTimeout bool) error {
	var cc *ipmiCCError
	if disableTimeout {
		// Best effort: not every BMC has parameter 3.
		if err := set("boot flag valid bit clearing", ipmiParamValidBitClear, ipmiNoBootFlagTimeout); err != nil && !errors.As(err, &cc) {
			return err
		}
	}
	// Tell BIOS/POST it has boot info to act on (best effort, as ipmitool).
	if err := set("boot info acknowledge", ipmiParamBootInfoAck, ipmiBootInfoAckBIOSMask, ipmiBootInfoAckBIOSUnack); err != nil && !errors.As(err, &cc) {
		return err
	}
	return set("boot flags", ipmiParamBootFlags, flags...)
}
