package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/netboot/httpsrv"
	"github.com/kilnhq/kiln/reconciler/api"
	"golang.org/x/sync/errgroup"
)

// checkAPIFlags refuses plain HTTP off loopback: tokens would cross the
// network in clear.
func checkAPIFlags(addr, cert, key string) error {
	if addr == "" {
		return nil
	}
	if (cert == "") != (key == "") {
		return errors.New("--api-cert and --api-key go together")
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--api %q: %w", addr, err)
	}
	if cert != "" {
		return nil
	}
	if ip, err := netip.ParseAddr(host); (err != nil || !ip.IsLoopback()) && host != "localhost" {
		return fmt.Errorf("--api %s: plain HTTP is only served on a loopback address (tokens would cross the network in clear); give --api-cert and --api-key (kiln certs issue --host ...)", addr)
	}
	return nil
}

// serveAPI runs the region API (reconciler/api) on c.api.
func (c serverConfig) serveAPI(ctx context.Context, g *errgroup.Group, store *inventory.Store, src source, log *slog.Logger) error {
	a := api.New(api.Config{Store: store, Sync: src.sync, Log: log.With("component", "api")})
	opts := httpsrv.Options{}
	if c.apiCert != "" {
		cert, err := tls.LoadX509KeyPair(c.apiCert, c.apiKey)
		if err != nil {
			return fmt.Errorf("--api-cert/--api-key: %w", err)
		}
		opts.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	ln, err := net.Listen("tcp", c.api)
	if err != nil {
		return fmt.Errorf("api: listen %s: %w", c.api, err)
	}
	goLogged(g, log, "api", func() error {
		actx, cancel := context.WithCancel(ctx)
		// Requests end with the server: watch streams do not hold the drain.
		opts.BaseContext = func(net.Listener) context.Context { return actx }
		ran := make(chan struct{})
		go func() { defer close(ran); a.Run(actx) }() // the cache: until actx ends
		err := <-httpsrv.Serve(actx, ln, a.Handler(), opts, log)
		cancel()
		<-ran
		return err
	})
	log.Info("region API serving", "addr", ln.Addr().String(), "tls", opts.TLS != nil)
	return nil
}
