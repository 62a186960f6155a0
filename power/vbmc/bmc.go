package vbmc

import (
	"context"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"sync"
	"time"

	"github.com/kilnhq/kiln/netboot/httpsrv"
	"golang.org/x/sync/errgroup"
)

// Config describes one virtual BMC. Empty addresses turn the endpoint off;
// ":0" or "127.0.0.1:0" picks a free port (read it back from the BMC).
type Config struct {
	// Name is the machine's name and its Redfish system Id ("vm-1").
	Name string
	// Username and Password are what clients log in with, over IPMI and
	// Redfish alike. IPMI limits them to 16 and 20 bytes.
	Username string
	Password string

	IPMIAddr       string // UDP, IPMI 2.0 lanplus (and 1.5 lan); usually :623
	RedfishAddr    string // TCP, Redfish over plain HTTP
	RedfishTLSAddr string // TCP, Redfish over HTTPS
	AdminAddr      string // TCP, HTTP: only the /vbmc admin API (it is on the Redfish listeners too)

	// TLSCertFile and TLSKeyFile are the HTTPS certificate and key (PEM);
	// when empty a self-signed certificate is generated for TLSHosts plus
	// localhost, 127.0.0.1, ::1 and the listener's own address.
	TLSCertFile, TLSKeyFile string
	TLSHosts                []string
	// CertOut, when set, is where the certificate the HTTPS listener
	// serves is written (PEM), for clients to trust.
	CertOut string

	// SessionTimeout ends a Redfish session that has been idle this long;
	// 0 means 30 minutes.
	SessionTimeout time.Duration
	// DisableIPMI15 refuses IPMI 1.5 (lan) sessions; IPMI 2.0 (lanplus)
	// is always served.
	DisableIPMI15 bool
	// Faults are the faults in effect at start; see Faults.
	Faults Faults
	// Logger receives the BMC's log; nil discards it.
	Logger *slog.Logger
	// Now is the clock for session expiry; nil is time.Now. For tests.
	Now func() time.Time
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

func (c *Config) validate() error {
	if !nameRE.MatchString(c.Name) {
		return fmt.Errorf("name %q: use letters, digits, '.', '_' and '-' (at most 63)", c.Name)
	}
	if c.Username == "" || c.Password == "" {
		return errors.New("a username and a password are required")
	}
	if c.IPMIAddr != "" {
		if len(c.Username) > 16 {
			return fmt.Errorf("username %q: IPMI allows at most 16 bytes", c.Username)
		}
		if len(c.Password) > 20 {
			return errors.New("password: IPMI allows at most 20 bytes")
		}
	}
	if c.IPMIAddr == "" && c.RedfishAddr == "" && c.RedfishTLSAddr == "" {
		return errors.New("no endpoint: give an IPMI, Redfish or Redfish TLS address")
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return errors.New("give both a TLS certificate and its key, or neither")
	}
	if c.SessionTimeout < 0 {
		return errors.New("session timeout is negative")
	}
	return c.Faults.Validate()
}

// BMC is one virtual BMC: IPMI and Redfish endpoints in front of one
// Machine. Create it with New (which binds the listeners, so addresses are
// known at once), serve with Run, stop by ending Run's context or Close.
// The BMC never closes its Machine.
type BMC struct {
	cfg  Config
	m    Machine
	log  *slog.Logger
	uuid [16]byte

	ctx    context.Context // ends when the BMC stops
	cancel context.CancelFunc
	wg     sync.WaitGroup // background power operations (graceful restart)

	opMu          sync.Mutex // serialises power operations
	restartCancel context.CancelFunc
	stopped       bool // Run has ended: no more background operations

	mu   sync.Mutex
	boot Boot

	faults   *faultState
	sessions *sessionStore
	now      func() time.Time

	ipmi    *ipmiServer
	ipmiLn  *net.UDPConn
	httpLns []httpListener
	certMu  sync.Mutex // guards certPEM and tlsCert, which RenewCertificate replaces
	certPEM []byte
	tlsCert *tls.Certificate

	runMu   sync.Mutex
	started bool
	closed  bool
	done    chan struct{}
}

type httpListener struct {
	ln    net.Listener
	tls   bool
	admin bool // the admin API only
}

// New validates cfg and binds the BMC's listeners.
func New(cfg Config, m Machine) (_ *BMC, err error) {
	if m == nil {
		return nil, errors.New("vbmc: no machine")
	}
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("vbmc %s: %w", cfg.Name, err)
	}
	if cfg.SessionTimeout == 0 {
		cfg.SessionTimeout = 30 * time.Minute
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	b := &BMC{
		cfg:    cfg,
		m:      m,
		log:    log.With("vm", cfg.Name),
		uuid:   nameUUID(cfg.Name),
		boot:   Boot{Enabled: BootDisabled, Target: TargetNone},
		faults: newFaultState(cfg.Faults),
		now:    cfg.Now,
		done:   make(chan struct{}),
	}
	if b.now == nil {
		b.now = time.Now
	}
	b.sessions = newSessionStore()
	b.ctx, b.cancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			b.closeListeners()
			b.cancel()
		}
	}()

	if cfg.IPMIAddr != "" {
		ua, err := net.ResolveUDPAddr("udp", cfg.IPMIAddr)
		if err != nil {
			return nil, fmt.Errorf("vbmc %s: IPMI address: %w", cfg.Name, err)
		}
		if b.ipmiLn, err = net.ListenUDP("udp", ua); err != nil {
			return nil, fmt.Errorf("vbmc %s: IPMI: %w", cfg.Name, err)
		}
		b.ipmi = newIPMIServer(b, b.ipmiLn)
	}
	listen := func(addr string, tls, admin bool) error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("vbmc %s: %w", cfg.Name, err)
		}
		b.httpLns = append(b.httpLns, httpListener{ln: ln, tls: tls, admin: admin})
		return nil
	}
	if cfg.RedfishAddr != "" {
		if err := listen(cfg.RedfishAddr, false, false); err != nil {
			return nil, err
		}
	}
	if cfg.RedfishTLSAddr != "" {
		if err := listen(cfg.RedfishTLSAddr, true, false); err != nil {
			return nil, err
		}
	}
	if cfg.AdminAddr != "" {
		if err := listen(cfg.AdminAddr, false, true); err != nil {
			return nil, err
		}
	}
	if cfg.RedfishTLSAddr != "" {
		if err := b.setupTLS(); err != nil {
			return nil, fmt.Errorf("vbmc %s: %w", cfg.Name, err)
		}
	}
	return b, nil
}

// Name is the machine's name, its Redfish system Id.
func (b *BMC) Name() string { return b.cfg.Name }

// Machine is the machine behind the BMC.
func (b *BMC) Machine() Machine { return b.m }

// IPMIAddr is the IPMI endpoint's address ("127.0.0.1:40123"), or "".
func (b *BMC) IPMIAddr() string {
	if b.ipmiLn == nil {
		return ""
	}
	return b.ipmiLn.LocalAddr().String()
}

func (b *BMC) listenerAddr(tls, admin bool) string {
	for _, l := range b.httpLns {
		if l.tls == tls && l.admin == admin {
			return l.ln.Addr().String()
		}
	}
	return ""
}

// RedfishURL is the plain-HTTP Redfish endpoint ("http://127.0.0.1:40124"), or "".
func (b *BMC) RedfishURL() string {
	if a := b.listenerAddr(false, false); a != "" {
		return "http://" + a
	}
	return ""
}

// RedfishTLSURL is the HTTPS Redfish endpoint ("https://127.0.0.1:40125"), or "".
func (b *BMC) RedfishTLSURL() string {
	if a := b.listenerAddr(true, false); a != "" {
		return "https://" + a
	}
	return ""
}

// AdminURL is the admin-only endpoint ("http://127.0.0.1:40126"), or "".
func (b *BMC) AdminURL() string {
	if a := b.listenerAddr(false, true); a != "" {
		return "http://" + a
	}
	return ""
}

// CertPEM is the certificate the HTTPS endpoint serves (PEM). A generated
// one is self-signed, so it is also the CA to trust; nil without HTTPS.
func (b *BMC) CertPEM() []byte {
	b.certMu.Lock()
	defer b.certMu.Unlock()
	return b.certPEM
}

// CertPool is a pool holding CertPEM, for a client's tls.Config RootCAs.
func (b *BMC) CertPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(b.CertPEM())
	return p
}

// ClientTLSConfig is a client TLS configuration that trusts the BMC.
func (b *BMC) ClientTLSConfig() *tls.Config {
	return &tls.Config{RootCAs: b.CertPool(), MinVersion: tls.VersionTLS12}
}

// Boot is the current boot override.
func (b *BMC) Boot() Boot {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.boot
}

// SetBoot replaces the boot override, as a client's request would.
func (b *BMC) SetBoot(boot Boot) error {
	if err := boot.validate(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.boot != boot {
		b.log.Info("boot override", "boot", boot.String())
	}
	b.boot = boot
	return nil
}

// Faults are the faults in effect.
func (b *BMC) Faults() Faults { return b.faults.get() }

// SetFaults replaces the faults in effect; requests hanging on the old
// ones are released.
func (b *BMC) SetFaults(f Faults) error {
	if err := f.Validate(); err != nil {
		return err
	}
	b.faults.set(f)
	b.log.Info("faults", "latency", f.Latency, "errorRate", f.ErrorRate, "failNext", f.FailNext, "hang", f.Hang, "protocol", f.Protocol)
	return nil
}

// DropSessions ends every Redfish and IPMI session at once, as a BMC
// reboot would; clients must log in again.
func (b *BMC) DropSessions() {
	n := b.sessions.clear()
	m := 0
	if b.ipmi != nil {
		m = b.ipmi.dropSessions()
	}
	b.log.Info("sessions dropped", "redfish", n, "ipmi", m)
}

// Run serves until ctx ends or Close is called; then it stops the
// listeners and returns. It returns nil after a clean stop.
func (b *BMC) Run(ctx context.Context) error {
	b.runMu.Lock()
	if b.started || b.closed {
		b.runMu.Unlock()
		return errors.New("vbmc: Run called twice or after Close")
	}
	b.started = true
	b.runMu.Unlock()
	defer close(b.done)

	g, gctx := errgroup.WithContext(ctx)
	var servers []*http.Server
	errLog := slog.NewLogLogger(b.log.Handler(), slog.LevelDebug)
	for _, l := range b.httpLns {
		h := b.handler(l.admin)
		o := httpsrv.Options{MaxConns: 64, ErrorLog: errLog,
			BaseContext: func(net.Listener) context.Context { return b.ctx }}
		if l.tls {
			o.TLS = b.serverTLSConfig()
		}
		srv, ln := httpsrv.New(h, l.ln, o)
		servers = append(servers, srv)
		g.Go(func() error {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("vbmc %s: serve %s: %w", b.cfg.Name, ln.Addr(), err)
			}
			return nil
		})
	}
	if b.ipmi != nil {
		g.Go(func() error { return b.ipmi.serve(b.ctx) })
	}
	g.Go(func() error {
		select {
		case <-gctx.Done():
		case <-b.ctx.Done():
		}
		b.cancel() // releases hanging requests and background operations
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, srv := range servers {
			srv.Shutdown(sctx) //nolint:errcheck // listeners close regardless
		}
		if b.ipmi != nil {
			b.ipmi.close()
		}
		return nil
	})
	b.log.Info("virtual BMC running", "ipmi", b.IPMIAddr(), "redfish", b.RedfishURL(), "redfishTLS", b.RedfishTLSURL(), "admin", b.AdminURL())
	err := g.Wait()
	b.cancel()
	// A power operation still in flight sees stopped under opMu and
	// starts no background work: the Wait below is the last.
	b.opMu.Lock()
	b.stopped = true
	b.opMu.Unlock()
	b.wg.Wait()
	b.log.Info("virtual BMC stopped")
	return err
}

// Close stops the BMC: Run returns, or the listeners close if Run never
// ran. It does not close the Machine.
func (b *BMC) Close() error {
	b.runMu.Lock()
	started, closed := b.started, b.closed
	b.closed = true
	b.runMu.Unlock()
	b.cancel()
	if started {
		<-b.done
	} else if !closed {
		b.closeListeners()
	}
	return nil
}

func (b *BMC) closeListeners() {
	if b.ipmiLn != nil {
		b.ipmiLn.Close()
	}
	for _, l := range b.httpLns {
		l.ln.Close()
	}
}

// opCtx bounds a power operation by the BMC's life and a timeout, for
// requests (IPMI) that come without a context of their own.
func (b *BMC) opCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(b.ctx, 30*time.Second)
}

// state is the machine's power state.
func (b *BMC) state(ctx context.Context) (PowerState, error) { return b.m.State(ctx) }

// cancelRestartLocked abandons a graceful restart in progress: any newer
// power operation takes precedence. opMu is held.
func (b *BMC) cancelRestartLocked() {
	if b.restartCancel != nil {
		b.restartCancel()
		b.restartCancel = nil
	}
}

// usedBoot notes that the machine started with boot: a one-time override
// is spent.
func (b *BMC) usedBoot(boot Boot) {
	if boot.Enabled != BootOnce || !boot.Active() {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.boot == boot {
		b.boot.Enabled = BootDisabled
		b.log.Info("one-time boot override used", "boot", boot.String())
	}
}

// powerOp runs one power operation: under opMu, after abandoning a
// graceful restart in progress (any newer operation takes precedence),
// with the machine's current state.
func (b *BMC) powerOp(ctx context.Context, op func(PowerState) error) error {
	b.opMu.Lock()
	defer b.opMu.Unlock()
	b.cancelRestartLocked()
	st, err := b.m.State(ctx)
	if err != nil {
		return err
	}
	return op(st)
}

// start starts the machine through how (PowerOn or Reset) with the boot
// override, logs it as what, and spends a one-time override.
func (b *BMC) start(ctx context.Context, what string, how func(context.Context, Boot) error) error {
	boot := b.Boot()
	if err := how(ctx, boot); err != nil {
		return err
	}
	b.log.Info(what, "boot", boot.String())
	b.usedBoot(boot)
	return nil
}

func (b *BMC) powerOnLocked(ctx context.Context) error {
	st, err := b.m.State(ctx)
	if err != nil {
		return err
	}
	if st == On {
		return nil
	}
	return b.start(ctx, "power on", b.m.PowerOn)
}

// powerOn starts the machine with the boot override; a no-op when on.
func (b *BMC) powerOn(ctx context.Context) error {
	b.opMu.Lock()
	defer b.opMu.Unlock()
	b.cancelRestartLocked()
	return b.powerOnLocked(ctx)
}

// powerOff stops the machine, at once when hard.
func (b *BMC) powerOff(ctx context.Context, hard bool) error {
	b.opMu.Lock()
	defer b.opMu.Unlock()
	b.cancelRestartLocked()
	if err := b.m.PowerOff(ctx, hard); err != nil {
		return err
	}
	b.log.Info("power off", "hard", hard)
	return nil
}

// reset restarts a running machine at once; ErrPoweredOff when off,
// unless onWhenOff.
func (b *BMC) reset(ctx context.Context, onWhenOff bool) error {
	return b.powerOp(ctx, func(st PowerState) error {
		if st == Off {
			if onWhenOff {
				return b.powerOnLocked(ctx)
			}
			return ErrPoweredOff
		}
		return b.start(ctx, "reset", b.m.Reset)
	})
}

// cycle turns a running machine off and on again; ErrPoweredOff when
// off, unless onWhenOff.
func (b *BMC) cycle(ctx context.Context, onWhenOff bool) error {
	return b.powerOp(ctx, func(st PowerState) error {
		if st == Off && !onWhenOff {
			return ErrPoweredOff
		}
		if st == On {
			if err := b.m.PowerOff(ctx, true); err != nil {
				return err
			}
			b.log.Info("power cycle: off")
		}
		return b.powerOnLocked(ctx)
	})
}

// gracefulRestart asks the operating system to shut down and starts the
// machine again once it is off. It returns after the request; the restart
// happens in the background unless a newer power operation intervenes.
func (b *BMC) gracefulRestart(ctx context.Context) error {
	return b.powerOp(ctx, func(st PowerState) error {
		if st == Off {
			return b.powerOnLocked(ctx)
		}
		return b.shutDownAndRestartLocked(ctx)
	})
}

// shutDownAndRestartLocked asks a running machine to shut down and
// starts, in the background, the wait for it to be off and the power on.
// opMu is held.
func (b *BMC) shutDownAndRestartLocked(ctx context.Context) error {
	if b.stopped {
		return ErrClosed
	}
	if err := b.m.PowerOff(ctx, false); err != nil {
		return err
	}
	b.log.Info("graceful restart: shutting down")
	rctx, cancel := context.WithCancel(b.ctx)
	b.restartCancel = cancel
	b.wg.Go(func() {
		defer cancel()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-rctx.Done():
				return
			case <-tick.C:
			}
			if st, err := b.m.State(rctx); err != nil || st != Off {
				continue
			}
			b.opMu.Lock()
			defer b.opMu.Unlock()
			if rctx.Err() != nil {
				return
			}
			b.restartCancel = nil
			if err := b.powerOnLocked(rctx); err != nil {
				b.log.Warn("graceful restart: power on failed", "err", err)
			}
			return
		}
	})
	return nil
}

// nameUUID derives a stable UUID (version 5 style) from the machine's
// name: the same name gets the same UUID in Redfish and the IPMI GUID.
func nameUUID(name string) [16]byte {
	h := sha1.Sum([]byte("kiln-vbmc:" + name))
	var u [16]byte
	copy(u[:], h[:16])
	u[6] = u[6]&0x0f | 0x50
	u[8] = u[8]&0x3f | 0x80
	return u
}

func uuidString(u [16]byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

func (b *BMC) setupTLS() error {
	cert, pemBytes, err := b.makeCertificate()
	if err != nil {
		return err
	}
	return b.useCertificate(cert, pemBytes)
}

// RenewCertificate replaces the HTTPS certificate, as a BMC whose
// certificate is renewed does: the configured files are read again, or a
// new self-signed certificate (a new CA) is generated. New connections get
// it; CertOut is rewritten. Open connections keep the old one until they
// close.
func (b *BMC) RenewCertificate() error {
	if b.listenerAddr(true, false) == "" {
		return errors.New("no HTTPS listener")
	}
	cert, pemBytes, err := b.makeCertificate()
	if err != nil {
		return err
	}
	if err := b.useCertificate(cert, pemBytes); err != nil {
		return err
	}
	b.log.Info("HTTPS certificate renewed", "certOut", b.cfg.CertOut)
	return nil
}

func (b *BMC) makeCertificate() (tls.Certificate, []byte, error) {
	if b.cfg.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(b.cfg.TLSCertFile, b.cfg.TLSKeyFile)
		if err != nil {
			return tls.Certificate{}, nil, fmt.Errorf("TLS certificate: %w", err)
		}
		pemBytes, err := os.ReadFile(b.cfg.TLSCertFile)
		if err != nil {
			return tls.Certificate{}, nil, err
		}
		return cert, pemBytes, nil
	}
	hosts := append([]string{"localhost", "127.0.0.1", "::1"}, b.cfg.TLSHosts...)
	if h, _, err := net.SplitHostPort(b.listenerAddr(true, false)); err == nil {
		hosts = append(hosts, h)
	}
	if h, err := os.Hostname(); err == nil {
		hosts = append(hosts, h)
	}
	return selfSigned(b.cfg.Name, hosts)
}

func (b *BMC) useCertificate(cert tls.Certificate, pemBytes []byte) error {
	if b.cfg.CertOut != "" {
		if err := os.WriteFile(b.cfg.CertOut, pemBytes, 0o644); err != nil {
			return fmt.Errorf("write certificate: %w", err)
		}
	}
	b.certMu.Lock()
	defer b.certMu.Unlock()
	b.tlsCert, b.certPEM = &cert, pemBytes
	return nil
}
