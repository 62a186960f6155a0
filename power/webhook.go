package power

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
)

// webhook drives anything with an HTTP API: PDUs, lab controllers,
// hypervisors. Each operation is one HTTP request configured by options:
//
//	onURL, offURL, softOffURL, cycleURL, statusURL, bootNetworkURL, bootDiskURL
//	<op>Method (default POST; GET for status), <op>Body
//	statusOnRegex, statusOffRegex   matched against the status body
//	expectStatus                    e.g. "200,204" (default: any 2xx)
//	auth                            basic (default, with username/password) or bearer (password is the token)
//	caFile                          CA bundle for https
//
// URLs may be absolute or a path relative to the BMC address. Operations
// without a URL are unsupported, except: off without softOffURL is used
// for soft off too, and cycle without cycleURL is off then on.
type webhook struct {
	t      Target
	base   *url.URL
	client *http.Client
	on     *regexp.Regexp
	off    *regexp.Regexp
	expect map[int]bool
}

func newWebhook(t Target) (Driver, error) {
	w := &webhook{t: t}
	if t.Address != "" {
		u, err := url.Parse(t.Address)
		if err != nil || u.Host == "" {
			return nil, Permanent(fmt.Errorf("webhook address %q is not a URL", t.Address))
		}
		w.base = u
	}
	var err error
	if w.on, err = regexp.Compile(opt(t, "statusOnRegex", `(?i)\bon\b`)); err != nil {
		return nil, Permanent(fmt.Errorf("statusOnRegex: %w", err))
	}
	if w.off, err = regexp.Compile(opt(t, "statusOffRegex", `(?i)\boff\b`)); err != nil {
		return nil, Permanent(fmt.Errorf("statusOffRegex: %w", err))
	}
	if s := t.Options["expectStatus"]; s != "" {
		w.expect = map[int]bool{}
		for _, c := range strings.Split(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(c))
			if err != nil {
				return nil, Permanent(fmt.Errorf("expectStatus %q: not a list of status codes", s))
			}
			w.expect[n] = true
		}
	}
	tc, err := tlsConfig(t)
	if err != nil {
		return nil, err
	}
	w.client = &http.Client{Transport: &http.Transport{TLSClientConfig: tc, Proxy: http.ProxyFromEnvironment}}
	return w, nil
}

func opt(t Target, name, def string) string {
	if v, ok := t.Options[name]; ok && v != "" {
		return v
	}
	return def
}

// tlsConfig verifies certificates unless the target says insecure, with
// the system pool or Options["caFile"].
func tlsConfig(t Target) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: t.Insecure}
	if f := t.Options["caFile"]; f != "" {
		pem, err := os.ReadFile(f)
		if err != nil {
			return nil, Permanent(fmt.Errorf("caFile: %w", err))
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, Permanent(fmt.Errorf("caFile %s holds no PEM certificate", f))
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

func (w *webhook) PowerOn(ctx context.Context) error {
	_, err := w.call(ctx, "on", "POST")
	return err
}

func (w *webhook) PowerOff(ctx context.Context, hard bool) error {
	op := "off"
	if !hard && w.t.Options["softOffURL"] != "" {
		op = "softOff"
	}
	_, err := w.call(ctx, op, "POST")
	return err
}

func (w *webhook) PowerCycle(ctx context.Context) error {
	if w.t.Options["cycleURL"] != "" {
		_, err := w.call(ctx, "cycle", "POST")
		return err
	}
	if err := w.PowerOff(ctx, true); err != nil {
		return err
	}
	return w.PowerOn(ctx)
}

func (w *webhook) Status(ctx context.Context) (State, error) {
	if w.t.Options["statusURL"] == "" {
		return Unknown, nil
	}
	body, err := w.call(ctx, "status", "GET")
	if err != nil {
		return Unknown, err
	}
	switch {
	case w.on.Match(body):
		return On, nil
	case w.off.Match(body):
		return Off, nil
	}
	return Unknown, Permanent(fmt.Errorf("status reply matches neither statusOnRegex %q nor statusOffRegex %q: %q", w.on, w.off, clip(body)))
}

func (w *webhook) SetBoot(ctx context.Context, b Boot) error {
	op := "bootNetwork"
	if b.Device == Disk {
		op = "bootDisk"
	}
	if w.t.Options[op+"URL"] == "" {
		return fmt.Errorf("no %sURL configured (set the firmware to boot from the network first): %w", op, ErrUnsupported)
	}
	_, err := w.call(ctx, op, "POST")
	return err
}

func (w *webhook) Close() error {
	w.client.CloseIdleConnections()
	return nil
}

// call makes the request configured for op and returns the reply body.
func (w *webhook) call(ctx context.Context, op, method string) ([]byte, error) {
	raw := w.t.Options[op+"URL"]
	if raw == "" {
		return nil, fmt.Errorf("no %sURL configured: %w", op, ErrUnsupported)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, Permanent(fmt.Errorf("%sURL %q: %w", op, raw, err))
	}
	if !u.IsAbs() {
		if w.base == nil {
			return nil, Permanent(fmt.Errorf("%sURL %q is relative but the BMC has no address", op, raw))
		}
		u = w.base.ResolveReference(u)
	}
	method = opt(w.t, op+"Method", method)
	var body io.Reader
	if b := w.t.Options[op+"Body"]; b != "" {
		body = strings.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, Permanent(fmt.Errorf("%s request: %w", op, err))
	}
	if body != nil {
		req.Header.Set("Content-Type", opt(w.t, "contentType", "application/json"))
	}
	switch opt(w.t, "auth", "basic") {
	case "bearer":
		req.Header.Set("Authorization", "Bearer "+w.t.Password)
	default:
		if w.t.Username != "" || w.t.Password != "" {
			req.SetBasicAuth(w.t.Username, w.t.Password)
		}
	}
	resp, err := w.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL is in the OpError already
		}
		return nil, fmt.Errorf("%s %s: %w", method, u.Redacted(), err)
	}
	defer resp.Body.Close()
	reply, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("%s %s: reading reply: %w", method, u.Redacted(), err)
	}
	ok := resp.StatusCode/100 == 2
	if w.expect != nil {
		ok = w.expect[resp.StatusCode]
	}
	if ok {
		return reply, nil
	}
	err = fmt.Errorf("%s %s: HTTP %d: %q", method, u.Redacted(), resp.StatusCode, clip(reply))
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return nil, fmt.Errorf("%w: %w", ErrAuth, err)
	case resp.StatusCode >= 400 && resp.StatusCode < 500 && resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusRequestTimeout:
		return nil, Permanent(err)
	}
	return nil, err // 5xx, 429, 408, unexpected 2xx/3xx: worth retrying
}

func clip(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return s
}
