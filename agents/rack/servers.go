package rack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/kilnhq/kiln/netboot/boot"
	"github.com/kilnhq/kiln/netboot/tftp"
)

// startBootServers starts TFTP and the HTTP boot server (scripts,
// metadata, agent API, and the image cache under /images/) for this term
// of leadership. The returned channel closes once both have stopped after
// ctx ends.
func (a *Agent) startBootServers(ctx context.Context) (<-chan struct{}, error) {
	done := make(chan struct{})
	var stops []func()
	if a.cfg.TFTPAddr != "" {
		o := a.cfg.TFTP
		o.Addr = a.cfg.TFTPAddr
		if a.cfg.IPXEDir != "" {
			n, err := stageIPXE(a.cfg.IPXEDir, o.Root)
			if err != nil {
				return nil, fmt.Errorf("stage iPXE binaries: %w", err)
			}
			a.log.Info("iPXE binaries staged for TFTP", "from", a.cfg.IPXEDir, "to", o.Root, "files", n)
		}
		srv, err := tftp.New(o, a.tftpM, func(ev tftp.Event) {
			if m, ok := (bootBackend{a}).MachineByPeer(ev.Peer.Addr().String()); ok {
				a.events.RecordTimeline(m, "tftp-"+ev.Result, fmt.Sprintf("file=%s bytes=%d", ev.File, ev.Bytes))
			}
		}, a.log.With("component", "tftp"))
		if err != nil {
			return nil, fmt.Errorf("tftp: %w", err)
		}
		tdone := make(chan struct{})
		go func() {
			defer close(tdone)
			if err := srv.Run(ctx); err != nil && ctx.Err() == nil {
				a.log.Error("tftp server stopped", "err", err)
			}
		}()
		stops = append(stops, func() { <-tdone })
	}
	if a.cfg.HTTPAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("/", boot.New(a.cfg.BootHTTP, bootBackend{a}, a.bootM, a.log.With("component", "boot")).Handler())
		if a.cache != nil {
			mux.Handle("/images/", a.cache.Handler())
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
		ln, err := net.Listen("tcp", a.cfg.HTTPAddr)
		if err != nil {
			return nil, fmt.Errorf("boot http: %w", err)
		}
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		hdone := make(chan struct{})
		go func() {
			defer close(hdone)
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				a.log.Error("boot http server stopped", "err", err)
			}
		}()
		go func() {
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			srv.Shutdown(sctx)
		}()
		stops = append(stops, func() { <-hdone })
		a.log.Info("serving HTTP boot", "addr", ln.Addr().String())
		if err := a.startHTTPS(ctx, mux, &stops); err != nil {
			return nil, err
		}
	}
	go func() {
		for _, s := range stops {
			s()
		}
		close(done)
	}()
	return done, nil
}
