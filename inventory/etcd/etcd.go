// Package etcd starts Kiln's embedded single-node etcd and connects to an
// external cluster (endpoints, TLS, client certificates).
package etcd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Config says where etcd is: external endpoints, or an embedded
// single-node server in DataDir when Endpoints is empty.
type Config struct {
	Endpoints []string // external cluster; empty means embedded
	CertFile  string   // client certificate for an external cluster
	KeyFile   string
	CAFile    string
	// Username and PasswordFile authenticate to an etcd with auth on
	// (kiln etcd init-roles); with client-certificate auth the
	// certificate's CN is the user and neither is needed.
	Username     string
	PasswordFile string

	DataDir   string // embedded: where etcd keeps its data
	ClientURL string // embedded: client listener, default http://127.0.0.1:2379
	PeerURL   string // embedded: peer listener, default http://127.0.0.1:2380
	// Name and InitialCluster make the embedded server one member of a
	// cluster started together (InitialCluster: name=peerURL,…); empty,
	// it is a single-node cluster named kiln.
	Name           string
	InitialCluster string
	// Embedded: the server's certificate, key and the CA that signs
	// client and peer certificates. With them the embedded server serves
	// TLS and requires client certificates (client-cert-auth).
	ServerCertFile string
	ServerKeyFile  string
	ServerCAFile   string
	// InsecureNetwork lets the embedded server listen beyond loopback
	// without TLS (--insecure-etcd): anyone on that network can then read
	// and rewrite everything. Logged loudly at start and every hour.
	InsecureNetwork bool

	// DialOptions are added to the client's gRPC dial options
	// (Instrument's interceptors).
	DialOptions []grpc.DialOption
}

// Instrument registers the etcd client's request metrics with reg
// (grpc_client_started_total, grpc_client_handled_total by method and
// code, and the message counters) and returns the dial options that feed
// them; put them in Config.DialOptions. These are the "etcd request
// rates" of the dashboard, seen from each Kiln process, so they exist
// with an external etcd as with the embedded one.
func Instrument(reg prometheus.Registerer) []grpc.DialOption {
	m := grpcprom.NewClientMetrics()
	reg.MustRegister(m)
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(m.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(m.StreamClientInterceptor()),
	}
}

// Embedded returns whether the config asks for an embedded server.
func (c Config) Embedded() bool { return len(c.Endpoints) == 0 }

// Embedded is a single-node etcd server running in-process.
type Embedded struct {
	etcd     *embed.Etcd
	URL      string
	log      *slog.Logger
	insecure []string // non-loopback URLs served without TLS
}

// serverTLS reports whether the embedded server has its certificate,
// key and client CA.
func (c Config) serverTLS() bool {
	return c.ServerCertFile != "" && c.ServerKeyFile != "" && c.ServerCAFile != ""
}

// CheckListen refuses an embedded server that would listen beyond
// loopback without TLS and client certificates, unless InsecureNetwork
// is set; it returns the URLs that are served insecurely (for the
// warning). It runs before anything listens.
func CheckListen(cfg Config) (insecure []string, err error) {
	if (cfg.ServerCertFile != "" || cfg.ServerKeyFile != "" || cfg.ServerCAFile != "") && !cfg.serverTLS() {
		return nil, errors.New("embedded etcd: TLS needs all of the server certificate, key and client CA (--etcd-server-cert, --etcd-server-key, --etcd-server-ca)")
	}
	for _, u := range []struct{ what, raw string }{{"client", cfg.ClientURL}, {"peer", cfg.PeerURL}} {
		parsed, err := url.Parse(u.raw)
		if err != nil {
			return nil, fmt.Errorf("embedded etcd: %s URL %q: %w", u.what, u.raw, err)
		}
		switch parsed.Scheme {
		case "http", "https":
		default:
			return nil, fmt.Errorf("embedded etcd: %s URL %q: scheme must be http or https", u.what, u.raw)
		}
		if parsed.Scheme == "https" && !cfg.serverTLS() {
			return nil, fmt.Errorf("embedded etcd: %s URL %s is https but no server certificate, key and CA are given", u.what, u.raw)
		}
		if loopback(parsed.Hostname()) || parsed.Scheme == "https" {
			continue
		}
		if !cfg.InsecureNetwork {
			return nil, fmt.Errorf("embedded etcd: refusing to serve %s URL %s without TLS: anyone who reaches it could read every BMC password and rewrite the desired state. "+
				"Serve https:// with --etcd-server-cert, --etcd-server-key and --etcd-server-ca (see docs/operations.md, Access control), listen on loopback, or pass --insecure-etcd", u.what, u.raw)
		}
		insecure = append(insecure, u.raw)
	}
	return insecure, nil
}

// loopback reports whether host is a loopback name or address; "" and
// unspecified addresses (0.0.0.0, ::) listen everywhere, so they are not.
func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// StartEmbedded starts etcd in cfg.DataDir and waits until it serves.
func StartEmbedded(ctx context.Context, cfg Config, log *slog.Logger) (*Embedded, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("embedded etcd: no data dir")
	}
	if cfg.ClientURL == "" {
		cfg.ClientURL = "http://127.0.0.1:2379"
	}
	if cfg.PeerURL == "" {
		cfg.PeerURL = "http://127.0.0.1:2380"
	}
	insecure, err := CheckListen(cfg)
	if err != nil {
		return nil, err
	}
	curl, err := url.Parse(cfg.ClientURL)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: client URL %q: %w", cfg.ClientURL, err)
	}
	purl, err := url.Parse(cfg.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: peer URL %q: %w", cfg.PeerURL, err)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded etcd: %w", err)
	}
	ec := embed.NewConfig()
	ec.Name = "kiln"
	if cfg.Name != "" {
		ec.Name = cfg.Name
	}
	ec.Dir = cfg.DataDir
	ec.ListenClientUrls = []url.URL{*curl}
	ec.AdvertiseClientUrls = []url.URL{*curl}
	ec.ListenPeerUrls = []url.URL{*purl}
	ec.AdvertisePeerUrls = []url.URL{*purl}
	ec.InitialCluster = ec.Name + "=" + purl.String()
	if cfg.InitialCluster != "" {
		ec.InitialCluster = cfg.InitialCluster
		ec.InitialClusterToken = "kiln"
	}
	if cfg.ServerCertFile != "" {
		// Both listeners: TLS, and only clients and peers with a
		// certificate of this CA (client-cert-auth).
		c, p := &ec.ClientTLSInfo, &ec.PeerTLSInfo
		c.CertFile, c.KeyFile, c.TrustedCAFile, c.ClientCertAuth = cfg.ServerCertFile, cfg.ServerKeyFile, cfg.ServerCAFile, true
		p.CertFile, p.KeyFile, p.TrustedCAFile, p.ClientCertAuth = cfg.ServerCertFile, cfg.ServerKeyFile, cfg.ServerCAFile, true
	}
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	ec.QuotaBackendBytes = 8 << 30
	// Keep ten minutes of history for watchers, then compact.
	ec.AutoCompactionMode = "periodic"
	ec.AutoCompactionRetention = "10m"
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd in %s (client %s, peer %s): %w", cfg.DataDir, curl.Host, purl.Host, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, errors.New("embedded etcd: not ready after 60s")
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
	log.Info("embedded etcd ready", "data_dir", cfg.DataDir, "client_url", curl.String(), "tls", cfg.ServerCertFile != "")
	em := &Embedded{etcd: e, URL: curl.String(), log: log, insecure: insecure}
	em.warnInsecure()
	return em, nil
}

// warnInsecure logs, loudly, that etcd is open to the network.
func (e *Embedded) warnInsecure() {
	if len(e.insecure) > 0 {
		e.log.Warn("INSECURE: embedded etcd serves the network without TLS or authentication (--insecure-etcd): anyone who reaches it can read every BMC password and rewrite the desired state",
			"urls", strings.Join(e.insecure, ","))
	}
}

// Run blocks until ctx ends or etcd fails, then stops etcd.
func (e *Embedded) Run(ctx context.Context) error {
	defer e.etcd.Close()
	tick := time.NewTicker(time.Hour)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-e.etcd.Err():
			return fmt.Errorf("embedded etcd: %w", err)
		case <-tick.C:
			e.warnInsecure()
		}
	}
}

// Close stops etcd.
func (e *Embedded) Close() { e.etcd.Close() }

// Connect returns a client for the configured cluster. It does not wait
// for a connection: the first request reports an unreachable cluster.
func Connect(cfg Config) (*clientv3.Client, error) {
	endpoints := cfg.Endpoints
	if len(endpoints) == 0 {
		endpoints = []string{"http://127.0.0.1:2379"}
	}
	cc := clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		// A revision is written in requests of up to ~1 MiB; answers to
		// a whole-inventory read may be larger.
		MaxCallRecvMsgSize: 256 << 20,
		DialOptions:        cfg.DialOptions,
	}
	if cfg.Username != "" {
		cc.Username = cfg.Username
		if cfg.PasswordFile != "" {
			b, err := os.ReadFile(cfg.PasswordFile)
			if err != nil {
				return nil, fmt.Errorf("etcd password for %s: %w", cfg.Username, err)
			}
			cc.Password = strings.TrimRight(string(b), "\r\n")
		}
	} else if cfg.PasswordFile != "" {
		return nil, errors.New("etcd: a password file needs a user name (--etcd-user)")
	}
	if cfg.CertFile != "" || cfg.CAFile != "" || anyHTTPS(endpoints) {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.CertFile != "" {
			cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("etcd client certificate: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		if cfg.CAFile != "" {
			pem, err := os.ReadFile(cfg.CAFile)
			if err != nil {
				return nil, fmt.Errorf("etcd CA: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("etcd CA %s: no PEM certificates", cfg.CAFile)
			}
			tc.RootCAs = pool
		}
		cc.TLS = tc
	}
	cli, err := clientv3.New(cc)
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w", strings.Join(endpoints, ","), err)
	}
	return cli, nil
}

func anyHTTPS(endpoints []string) bool {
	for _, e := range endpoints {
		if strings.HasPrefix(e, "https://") {
			return true
		}
	}
	return false
}

// Unreachable wraps an error from etcd with what to check.
func Unreachable(endpoints []string, err error) error {
	if len(endpoints) == 0 {
		endpoints = []string{"http://127.0.0.1:2379"}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("etcd at %s did not answer: is `kiln server` running, or is --etcd-endpoints right? (%w)", strings.Join(endpoints, ","), err)
	}
	return fmt.Errorf("etcd at %s: %w", strings.Join(endpoints, ","), err)
}
