package machine

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/kilnhq/kiln/inventory/pki"
)

// CAPath is where the ephemeral image carries the CA that signed the
// rack's certificate (kiln image build-ephemeral --ca).
const CAPath = "/etc/kiln/ca.pem"

// ErrDowngrade is a plain http URL given to an agent that holds a CA: the
// agent never sends its token where it cannot check who receives it.
var ErrDowngrade = errors.New("refusing plain http: this agent holds the rack's CA and talks to the rack over https only")

// LoadCA reads the CA file at path. A missing file is no CA (nil, nil):
// the agent then talks plain http, unauthenticated. A file that holds no
// certificate is an error.
func LoadCA(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("rack CA: %w", err)
	}
	if _, err := pki.Pool(b, path); err != nil {
		return nil, fmt.Errorf("rack CA: %w", err)
	}
	return b, nil
}

// TLSHTTPClient is an HTTP client that trusts the certificates of caPEM
// only (never the system roots), checks the server's name against the
// URL's host, and follows no redirect to plain http.
func TLSHTTPClient(caPEM []byte, timeout, headerTimeout time.Duration) (*http.Client, error) {
	pool, err := pki.Pool(caPEM, "rack CA")
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	tr.ResponseHeaderTimeout = headerTimeout
	return &http.Client{Timeout: timeout, Transport: tr, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if req.URL.Scheme != "https" {
			return fmt.Errorf("redirect to %s: %w", req.URL.Redacted(), ErrDowngrade)
		}
		if len(via) >= 5 {
			return errors.New("stopped after 5 redirects")
		}
		return nil
	}}, nil
}

// NewTLSClient is NewClient for an agent that holds the rack's CA: every
// request goes over https verified against caPEM only, and an http URL
// (kiln.url, or one the rack hands out) is refused with ErrDowngrade.
func NewTLSClient(base, machine, token string, caPEM []byte, retry Retry, log *slog.Logger) (*Client, error) {
	if err := checkHTTPS(base); err != nil {
		return nil, fmt.Errorf("kiln.url: %w", err)
	}
	hc, err := TLSHTTPClient(caPEM, time.Minute, 0)
	if err != nil {
		return nil, err
	}
	c := NewClient(base, machine, token, hc, retry, log)
	c.httpsOnly = true
	return c, nil
}

func checkHTTPS(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	if u.Scheme != "https" {
		return fmt.Errorf("%s: %w", u.Redacted(), ErrDowngrade)
	}
	return nil
}
