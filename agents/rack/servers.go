package rack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/kilnhq/kiln/netboot/boot"
	"github.com/kilnhq/kiln/netboot/httpsrv"
	"github.com/kilnhq/kiln/netboot/tftp"
)

// Defaults of the boot server's Config fields.
const (
	DefaultRequestTimeout = 2 * time.Second
	// retryAfter is the Retry-After (seconds) added to every 503 of the
	// boot server that does not set its own.
	retryAfter = "2"
)

// crew runs a term's servers. The first to stop while its context is
// still live (a listener closed, a socket error) is logged and reported
// on died, once: it ends the term.
type crew struct {
	ctx  context.Context
	log  *slog.Logger
	wg   sync.WaitGroup
	died chan error
}

func newCrew(ctx context.Context, log *slog.Logger) *crew {
	return &crew{ctx: ctx, log: log, died: make(chan error, 1)}
}

// run runs fn under the crew's context.
func (c *crew) run(name string, fn func(context.Context) error) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		err := fn(c.ctx)
		if c.ctx.Err() != nil {
			return
		}
		if err == nil {
			err = errors.New("returned while still needed")
		}
		err = fmt.Errorf("%s server stopped: %w", name, err)
		c.log.Error("a server stopped; ending the term", "err", err)
		select {
		case c.died <- err:
		default: // another one already ended the term
		}
	}()
}

// wait waits for every server to stop (after the context ends).
func (c *crew) wait() { c.wg.Wait() }

// startBootServers starts TFTP and the HTTP boot server (scripts,
// metadata, agent API, and the image cache under /images/) for this term
// of leadership, in c.
func (a *Agent) startBootServers(ctx context.Context, c *crew) error {
	if a.cfg.TFTPAddr != "" {
		if err := a.startTFTP(c); err != nil {
			return err
		}
	}
	if a.cfg.HTTPAddr == "" {
		return nil
	}
	h, err := a.bootHandler()
	if err != nil {
		return err
	}
	ln, err := a.listenTCP(a.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("boot http: %w", err)
	}
	c.run("boot http", func(ctx context.Context) error { return <-a.serve(ctx, ln, h, a.cfg.HTTPLimits) })
	a.log.Info("serving HTTP boot", "addr", ln.Addr().String())
	return a.startHTTPS(c, h)
}

// startTFTP stages the iPXE binaries and starts the TFTP server in c.
func (a *Agent) startTFTP(c *crew) error {
	o := a.cfg.TFTP
	o.Addr = a.cfg.TFTPAddr
	if a.cfg.IPXEDir != "" {
		n, err := stageIPXE(a.cfg.IPXEDir, o.Root)
		if err != nil {
			return fmt.Errorf("stage iPXE binaries: %w", err)
		}
		a.log.Info("iPXE binaries staged for TFTP", "from", a.cfg.IPXEDir, "to", o.Root, "files", n)
	}
	srv, err := tftp.New(o, a.tftpM, func(ev tftp.Event) {
		if m, ok := (bootBackend{a}).MachineByPeer(ev.Peer.Addr().String()); ok {
			a.events.RecordTimeline(m, "tftp-"+ev.Result, fmt.Sprintf("file=%s bytes=%d", ev.File, ev.Bytes))
		}
	}, a.log.With("component", "tftp"))
	if err != nil {
		return fmt.Errorf("tftp: %w", err)
	}
	c.run("tftp", srv.Run)
	return nil
}

// listenTCP opens a boot server's listener (through the test hook when
// set).
func (a *Agent) listenTCP(addr string) (net.Listener, error) {
	if a.listen != nil {
		return a.listen("tcp", addr)
	}
	return net.Listen("tcp", addr)
}

// serve serves h on ln with the hardened server of httpsrv until ctx ends.
// The returned channel yields the error that stopped the server early, if
// any, and closes once the server has stopped.
func (a *Agent) serve(ctx context.Context, ln net.Listener, h http.Handler, o httpsrv.Options) <-chan error {
	return httpsrv.Serve(ctx, ln, h, o, a.log)
}

// bootHandler is the boot server's handler: scripts, metadata and the
// agent API under a per-request deadline, images for the rack's subnets,
// and the iPXE binaries over HTTP.
func (a *Agent) bootHandler() (http.Handler, error) {
	mux := http.NewServeMux()
	mux.Handle("/", boot.New(a.cfg.BootHTTP, bootBackend{a}, a.bootM, a.log.With("component", "boot")).Handler())
	if a.cache != nil {
		mux.Handle("/images/", a.cache.RestrictedHandler(a.onRackSubnet))
	}
	if a.cfg.TFTPAddr != "" && a.cfg.TFTP.Root != "" {
		// UEFI HTTP boot firmware fetches ipxe.efi over HTTP: the same
		// files TFTP serves, through an os.Root (no links out).
		root, err := os.OpenRoot(a.cfg.TFTP.Root)
		if err != nil {
			return nil, fmt.Errorf("iPXE over HTTP: %w", err)
		}
		mux.Handle("GET /ipxe/", http.StripPrefix("/ipxe/", http.FileServerFS(root.FS())))
	}
	d := a.cfg.RequestTimeout
	if d <= 0 {
		d = DefaultRequestTimeout
	}
	return withDeadline(mux, d), nil
}

// withDeadline gives every request but the long downloads (/images/,
// /ipxe/) a context that ends after d, so that etcd look-ups fail (and the
// boot handlers answer 503) instead of hanging while etcd is away, and adds
// Retry-After to their 503 answers.
func withDeadline(h http.Handler, d time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/images/") || strings.HasPrefix(r.URL.Path, "/ipxe/") {
			h.ServeHTTP(w, r)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), d)
		defer cancel()
		h.ServeHTTP(&retryWriter{ResponseWriter: w}, r.WithContext(ctx))
	})
}

// retryWriter adds Retry-After to a 503 that has none.
type retryWriter struct {
	http.ResponseWriter
	wrote bool
}

func (w *retryWriter) WriteHeader(code int) {
	if !w.wrote && code == http.StatusServiceUnavailable && w.Header().Get("Retry-After") == "" {
		w.Header().Set("Retry-After", retryAfter)
	}
	w.wrote = true
	w.ResponseWriter.WriteHeader(code)
}

func (w *retryWriter) Write(p []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the connection.
func (w *retryWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// onRackSubnet reports whether ip may fetch images: an address on one of
// the subnets this rack serves (in its current view, which follows
// reloads), or the rack host itself (127.0.0.1, ::1).
func (a *Agent) onRackSubnet(ip netip.Addr) bool {
	if ip == netip.AddrFrom4([4]byte{127, 0, 0, 1}) || ip == netip.IPv6Loopback() {
		return true
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, s := range a.view.Subnets {
		if s.Prefix.Contains(ip) {
			return true
		}
	}
	return false
}
