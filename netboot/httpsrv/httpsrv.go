package httpsrv

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"time"

	"golang.org/x/net/netutil"
)

// Options are a server's limits. Zero values take the defaults.
type Options struct {
	// ReadHeaderTimeout bounds the time to read a request's headers
	// (default 10s).
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes a keep-alive connection idle this long between
	// requests (default 60s).
	IdleTimeout time.Duration
	// MaxHeaderBytes caps a request's header size (default 16 KiB).
	MaxHeaderBytes int
	// MaxConns caps the connections open at a time (default 1,024); the
	// next connection waits in the kernel's accept queue until one closes.
	MaxConns int
	// TLS, when set, serves TLS with it (the connection cap counts TCP
	// connections, before the handshake).
	TLS *tls.Config
	// ErrorLog receives net/http's own errors (nil: the log package's).
	ErrorLog *log.Logger
	// BaseContext, when set, is every request's parent context.
	BaseContext func(net.Listener) context.Context
}

// Defaults of Options.
const (
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultIdleTimeout       = 60 * time.Second
	DefaultMaxHeaderBytes    = 16 << 10
	DefaultMaxConns          = 1024
)

// shutdownTimeout bounds how long Serve lets requests in progress finish
// after its context ends: 1 s, so that a component stops within 2 s of
// SIGTERM even with a download in flight (iPXE retries a cut transfer).
const shutdownTimeout = time.Second

// WithDefaults returns o with zero values replaced by the defaults.
func (o Options) WithDefaults() Options {
	if o.ReadHeaderTimeout <= 0 {
		o.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if o.MaxConns <= 0 {
		o.MaxConns = DefaultMaxConns
	}
	return o
}

// New returns a server for h with o's limits, and ln wrapped to hold at
// most o.MaxConns connections at a time (and to serve TLS when o.TLS is
// set). Serve the returned listener with the returned server.
func New(h http.Handler, ln net.Listener, o Options) (*http.Server, net.Listener) {
	o = o.WithDefaults()
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: o.ReadHeaderTimeout,
		IdleTimeout:       o.IdleTimeout,
		MaxHeaderBytes:    o.MaxHeaderBytes,
		ErrorLog:          o.ErrorLog,
		BaseContext:       o.BaseContext,
	}
	ln = netutil.LimitListener(ln, o.MaxConns)
	if o.TLS != nil {
		ln = tls.NewListener(ln, o.TLS)
	}
	return srv, ln
}

// Serve serves h on ln with o's limits until ctx ends, then shuts the
// server down, letting requests in progress finish for a few seconds. The
// returned channel receives the server's error (nil after a clean stop)
// and is then closed.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, o Options, log *slog.Logger) <-chan error {
	srv, lln := New(h, ln, o)
	done := make(chan error, 1)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lln) }()
	go func() {
		defer close(done)
		select {
		case err := <-served:
			// Serve returns on its own only when the listener fails.
			done <- fmt.Errorf("serve http on %s: %w", ln.Addr(), err)
			return
		case <-ctx.Done():
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil && log != nil {
			log.Warn("http requests still running after the drain; closing them", "addr", ln.Addr().String(), "err", err)
			srv.Close()
		}
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			done <- fmt.Errorf("serve http on %s: %w", ln.Addr(), err)
		}
	}()
	return done
}
