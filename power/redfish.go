package power

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/stmcginnis/gofish"
	"github.com/stmcginnis/gofish/schemas"
)

// redfishDriver speaks Redfish through gofish. It logs in with a session
// (options.auth=basic uses HTTP Basic instead), finds the system (the only
// one, or options.systemID), and verifies TLS unless the target is
// insecure; options.caFile replaces the system roots. A session that
// expired is replaced once per call. The CA file is read again when its
// size or modification time changed, and when the BMC's certificate fails
// verification (the call is then tried once more with the new file).
type redfishDriver struct {
	t        Target
	endpoint string
	http     *http.Client
	ca       *caBundle // options.caFile as last read; nil without one or when insecure
	client   *gofish.APIClient
	system   string // @odata.id of the ComputerSystem
}

func newRedfish(t Target) (Driver, error) {
	addr := t.Address
	if addr == "" {
		return nil, Permanent(errors.New("redfish: no BMC address"))
	}
	if !strings.Contains(addr, "://") {
		addr = "https://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, Permanent(fmt.Errorf("redfish: address %q is not an http(s) URL or host", t.Address))
	}
	r := &redfishDriver{
		t:        t,
		endpoint: u.Scheme + "://" + u.Host,
		// A last resort against a BMC that accepts a connection and then
		// never answers; callers' contexts normally end calls first.
		http: &http.Client{Timeout: 2 * time.Minute},
	}
	if f := t.Options["caFile"]; f != "" && !t.Insecure {
		if r.ca, err = loadCA(f); err != nil {
			return nil, Permanent(err)
		}
	}
	r.http.Transport = r.transport()
	return r, nil
}

// transport is a new HTTP transport trusting r.ca (or the system roots).
func (r *redfishDriver) transport() *http.Transport {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: r.t.Insecure}
	if r.ca != nil {
		tc.RootCAs = r.ca.pool
	}
	return &http.Transport{
		TLSClientConfig:     tc,
		TLSHandshakeTimeout: 15 * time.Second,
		MaxIdleConnsPerHost: 2,
	}
}

// reloadCA reads the CA file again, when its size or modification time
// changed or (force) after a certificate failed verification, and
// reports whether the certificates changed. New connections trust the new
// file; the session, which belongs to the BMC, is kept.
func (r *redfishDriver) reloadCA(force bool) bool {
	if r.ca == nil || (!force && !r.ca.changed()) {
		return false
	}
	n := r.ca.reload()
	if n == nil {
		return false
	}
	r.ca = n
	old := r.http.Transport
	r.http.Transport = r.transport()
	if t, ok := old.(*http.Transport); ok {
		t.CloseIdleConnections()
	}
	return true
}

func (r *redfishDriver) connect(ctx context.Context) (*gofish.APIClient, error) {
	if r.client == nil {
		c, err := gofish.ConnectContext(ctx, gofish.ClientConfig{
			Endpoint:          r.endpoint,
			Username:          r.t.Username,
			Password:          r.t.Password,
			HTTPClient:        r.http,
			NoModifyTransport: true,
			ReuseConnections:  true,
			BasicAuth:         r.t.Options["auth"] == "basic",
		})
		if err != nil {
			return nil, classify("log in", err)
		}
		r.client = c
	}
	return r.client.WithContext(ctx), nil
}

// with runs fn on the system, logging in again once if the session was
// dropped or expired, and trying once more if the BMC's certificate failed
// verification and the CA file has changed since it was read. A request
// that failed verification never reached the BMC, so repeating it is safe.
func (r *redfishDriver) with(ctx context.Context, fn func(*schemas.ComputerSystem) error) error {
	r.reloadCA(false)
	relogged, reloaded := false, false
	for {
		c, err := r.connect(ctx)
		loggedIn := err == nil
		if loggedIn {
			var sys *schemas.ComputerSystem
			if sys, err = r.findSystem(c); err == nil {
				err = fn(sys)
			}
		}
		switch {
		case err == nil:
			return nil
		case errors.Is(err, errTLSVerify) && !reloaded && r.reloadCA(true):
			reloaded = true
			continue
		case errors.Is(err, errTLSVerify) && r.ca != nil:
			return fmt.Errorf("%w (caFile %s, read again: it does not verify the BMC's certificate)", err, r.ca.path)
		case loggedIn && !relogged && errors.Is(err, ErrAuth) && r.t.Options["auth"] != "basic":
			// Refused after a successful login: the session expired or
			// the BMC dropped it. Log in again, once.
			relogged = true
			r.client = nil
			continue
		}
		return err
	}
}

func (r *redfishDriver) findSystem(c *gofish.APIClient) (*schemas.ComputerSystem, error) {
	if r.system == "" {
		if id := r.t.Options["systemID"]; id != "" {
			r.system = "/redfish/v1/Systems/" + id
		} else {
			systems, err := c.Service.Systems()
			if err != nil {
				return nil, classify("list systems", err)
			}
			switch len(systems) {
			case 0:
				return nil, Permanent(errors.New("the BMC lists no systems"))
			case 1:
				r.system = systems[0].ODataID
			default:
				ids := make([]string, len(systems))
				for i, s := range systems {
					ids[i] = s.ID
				}
				return nil, Permanent(fmt.Errorf("the BMC lists %d systems (%s): set options.systemID", len(systems), strings.Join(ids, ", ")))
			}
		}
	}
	sys, err := schemas.GetComputerSystem(c, r.system)
	if err != nil {
		return nil, classify("read system "+r.system, err)
	}
	return sys, nil
}

func (r *redfishDriver) reset(sys *schemas.ComputerSystem, types ...schemas.ResetType) error {
	allowed, err := sys.GetSupportedResetTypes()
	if err != nil {
		allowed = nil // no ActionInfo: try the first choice and let the BMC say
	}
	for _, t := range types {
		if len(allowed) == 0 || containsReset(allowed, t) {
			_, err := sys.Reset(t)
			return classify("reset "+string(t), err)
		}
	}
	return fmt.Errorf("none of the reset types %v is allowed (the BMC allows %v): %w", types, allowed, ErrUnsupported)
}

func containsReset(list []schemas.ResetType, t schemas.ResetType) bool {
	for _, x := range list {
		if x == t {
			return true
		}
	}
	return false
}

func (r *redfishDriver) PowerOn(ctx context.Context) error {
	return r.with(ctx, func(sys *schemas.ComputerSystem) error {
		if stateOf(sys.PowerState) == On {
			return nil
		}
		return r.reset(sys, schemas.OnResetType, schemas.ForceOnResetType)
	})
}

func (r *redfishDriver) PowerOff(ctx context.Context, hard bool) error {
	return r.with(ctx, func(sys *schemas.ComputerSystem) error {
		if stateOf(sys.PowerState) == Off {
			return nil
		}
		if hard {
			return r.reset(sys, schemas.ForceOffResetType)
		}
		return r.reset(sys, schemas.GracefulShutdownResetType)
	})
}

func (r *redfishDriver) PowerCycle(ctx context.Context) error {
	return r.with(ctx, func(sys *schemas.ComputerSystem) error {
		if stateOf(sys.PowerState) == Off {
			return r.reset(sys, schemas.OnResetType, schemas.ForceOnResetType)
		}
		return r.reset(sys, schemas.PowerCycleResetType, schemas.ForceRestartResetType)
	})
}

func (r *redfishDriver) Status(ctx context.Context) (State, error) {
	st := Unknown
	err := r.with(ctx, func(sys *schemas.ComputerSystem) error {
		st = stateOf(sys.PowerState)
		if st == Unknown {
			return fmt.Errorf("unexpected PowerState %q", sys.PowerState)
		}
		return nil
	})
	return st, err
}

// stateOf maps Redfish power states: a system powering off is still on,
// one powering on is still off.
func stateOf(p schemas.PowerState) State {
	switch p {
	case schemas.OnPowerState, schemas.PoweringOffPowerState:
		return On
	case schemas.OffPowerState, schemas.PoweringOnPowerState:
		return Off
	}
	return Unknown
}

func (r *redfishDriver) SetBoot(ctx context.Context, b Boot) error {
	boot := &schemas.Boot{
		BootSourceOverrideTarget:  schemas.PxeBootSource,
		BootSourceOverrideEnabled: schemas.OnceBootSourceOverrideEnabled,
	}
	if b.Device == Disk {
		boot.BootSourceOverrideTarget = schemas.HddBootSource
	}
	if b.Persistent {
		boot.BootSourceOverrideEnabled = schemas.ContinuousBootSourceOverrideEnabled
	}
	if r.t.Options["bootMode"] != "omit" { // some BMCs refuse to be told the mode
		boot.BootSourceOverrideMode = schemas.LegacyBootSourceOverrideMode
		if b.UEFI {
			boot.BootSourceOverrideMode = schemas.UEFIBootSourceOverrideMode
		}
	}
	return r.with(ctx, func(sys *schemas.ComputerSystem) error {
		return classify("set boot override", sys.SetBoot(boot))
	})
}

func (r *redfishDriver) Close() error {
	if r.client != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r.client.WithContext(ctx).Logout()
		r.client = nil
	}
	r.http.CloseIdleConnections()
	return nil
}

// classify turns gofish and transport errors into Kiln's: 401/403 are
// authentication failures, other 4xx and TLS verification failures are
// permanent, the rest (5xx, timeouts, refused connections, garbled
// replies) may pass.
func classify(what string, err error) error {
	if err == nil {
		return nil
	}
	var re *schemas.Error
	if errors.As(err, &re) {
		code := re.HTTPReturnedStatusCode
		msg := fmt.Errorf("%s: HTTP %d %s: %s", what, code, re.Code, clip([]byte(re.Message)))
		switch {
		case code == http.StatusUnauthorized || code == http.StatusForbidden:
			return fmt.Errorf("%w: %w", ErrAuth, msg)
		case code >= 400 && code < 500 && code != http.StatusTooManyRequests && code != http.StatusRequestTimeout:
			return Permanent(msg)
		}
		return msg
	}
	var ue x509.UnknownAuthorityError
	var he x509.HostnameError
	var ce *tls.CertificateVerificationError
	if errors.As(err, &ue) || errors.As(err, &he) || errors.As(err, &ce) {
		return Permanent(fmt.Errorf("%s: %w (set options.caFile, or insecure: true for a lab): %w", what, errTLSVerify, err))
	}
	var ur *url.Error
	if errors.As(err, &ur) {
		err = ur.Err
	}
	return fmt.Errorf("%s: %w", what, err)
}
