package rack

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"

	"github.com/kilnhq/kiln/inventory/pki"
	"github.com/kilnhq/kiln/netboot/httpsrv"
)

// The HTTPS listener serves the boot server's routes (the same mux as
// HTTP) with the rack's certificate, so that the machine agent, which
// holds the CA in its initramfs, can tell the rack from an impostor, and
// its token and the deployed OS's report-in token never cross the
// network in the clear. iPXE stays on the HTTP listener (see
// docs/boot.md).

// startHTTPS serves h over TLS on HTTPSAddr in c, when it is set.
func (a *Agent) startHTTPS(c *crew, h http.Handler) error {
	if a.cfg.HTTPSAddr == "" {
		return nil
	}
	certs, err := loadCertFiles(a.cfg.TLSCert, a.cfg.TLSKey, a.log)
	if err != nil {
		return fmt.Errorf("boot https: %w", err)
	}
	ln, err := a.listenTCP(a.cfg.HTTPSAddr)
	if err != nil {
		return fmt.Errorf("boot https: %w", err)
	}
	c.run("boot https", func(ctx context.Context) error { return <-serveTLS(ctx, ln, h, certs, a.cfg.HTTPLimits, a.log) })
	a.log.Info("serving HTTPS boot (agent API, metadata, OS report-in)", "addr", ln.Addr().String(), "cert", a.cfg.TLSCert)
	return nil
}

// serveTLS serves h on ln over TLS with the certificate of certs, through
// httpsrv's hardened server, until ctx ends; the channel yields the error
// that stopped it early, if any, and closes when the server has stopped.
func serveTLS(ctx context.Context, ln net.Listener, h http.Handler, certs *certFiles, o httpsrv.Options, log *slog.Logger) <-chan error {
	o.TLS = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.get}
	// A refused handshake (an agent without the CA, a scanner) is logged
	// at debug level, not on the server's standard logger.
	o.ErrorLog = slog.NewLogLogger(log.Handler(), slog.LevelDebug)
	return httpsrv.Serve(ctx, ln, h, o, log)
}

// certFiles is the rack's certificate and key as last read. The files are
// looked at on each handshake (a stat each: handshakes are few) and read
// again when they changed, so that a renewed certificate is served
// without a restart; a pair that does not load (half written, or a key
// that does not match) is logged and the previous one stays.
type certFiles struct {
	certPath string
	files    *pki.Reloader[*tls.Certificate]
	log      *slog.Logger
}

func loadCertFiles(certPath, keyPath string, log *slog.Logger) (*certFiles, error) {
	if certPath == "" || keyPath == "" {
		return nil, errors.New("a TLS certificate and key are required (--tls-cert, --tls-key; kiln certs issue makes them)")
	}
	files, err := pki.NewReloader(func() (*tls.Certificate, error) {
		cert, err := tls.LoadX509KeyPair(certPath, keyPath)
		return &cert, err
	}, certPath, keyPath)
	if err != nil {
		return nil, fmt.Errorf("TLS certificate %s, key %s: %w", certPath, keyPath, err)
	}
	return &certFiles{certPath: certPath, files: files, log: log}, nil
}

// get is tls.Config.GetCertificate.
func (c *certFiles) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	cert, loaded, err := c.files.Get()
	switch {
	case err != nil:
		c.log.Warn("TLS certificate changed but does not load; serving the previous one", "cert", c.certPath, "err", err)
	case loaded:
		c.log.Info("TLS certificate reloaded", "cert", c.certPath)
	}
	return cert, nil
}

// TLSAgentURL is the URL machines reach the HTTPS listener at: AgentURL
// when given, else BootHTTP.BaseURL's host with HTTPSAddr's port. It is
// empty without HTTPSAddr.
func (c Config) TLSAgentURL() (string, error) {
	if c.HTTPSAddr == "" {
		if c.AgentURL != "" {
			return "", errors.New("an agent URL needs the HTTPS listener (--https)")
		}
		return "", nil
	}
	if c.HTTPAddr == "" {
		return "", errors.New("the HTTPS listener serves the HTTP boot server's routes: --http is needed too")
	}
	if c.AgentURL != "" {
		u, err := url.Parse(c.AgentURL)
		if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return "", fmt.Errorf("agent URL %q: want https://host[:port]", c.AgentURL)
		}
		return "https://" + u.Host, nil
	}
	_, port, err := net.SplitHostPort(c.HTTPSAddr)
	if err != nil {
		return "", fmt.Errorf("HTTPS address %q: %w", c.HTTPSAddr, err)
	}
	if c.BootHTTP.BaseURL == "" {
		return "", errors.New("machines need the rack's https URL: give --agent-url, or --boot-url so that its host is used")
	}
	u, err := url.Parse(c.BootHTTP.BaseURL)
	if err != nil || u.Hostname() == "" {
		return "", fmt.Errorf("boot URL %q has no host", c.BootHTTP.BaseURL)
	}
	if port == "0" {
		return "", errors.New("an HTTPS address with port 0 cannot be told to machines: give a port or --agent-url")
	}
	return "https://" + net.JoinHostPort(u.Hostname(), port), nil
}

// CheckTLS loads the certificate and key once, so that a bad pair is
// reported at start rather than at the first term of leadership.
func (c Config) CheckTLS() error {
	if c.HTTPSAddr == "" {
		return nil
	}
	_, err := loadCertFiles(c.TLSCert, c.TLSKey, slog.New(slog.DiscardHandler))
	return err
}
