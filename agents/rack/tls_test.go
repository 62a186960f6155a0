package rack

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/netboot/httpsrv"
	"github.com/kilnhq/kiln/spec/agentapi"
	"github.com/kilnhq/kiln/spec/kilntest"

	"github.com/kilnhq/kiln/agents/machine"
	"github.com/kilnhq/kiln/agents/machine/facts"
	"github.com/kilnhq/kiln/agents/machine/racktest"
	"github.com/kilnhq/kiln/inventory/etcdtest"
	"github.com/kilnhq/kiln/inventory/etcdtest/invtest"
	"github.com/kilnhq/kiln/inventory/pki"
	"github.com/kilnhq/kiln/netboot/boot"
	"github.com/kilnhq/kiln/netboot/dhcp"
	"github.com/prometheus/client_golang/prometheus"
)

// labCA makes a CA and a rack certificate for 127.0.0.1 in a temporary
// folder; it returns the folder, the CA's PEM and the pair's paths.
func labCA(t *testing.T) (dir string, ca []byte, cert, key string) {
	t.Helper()
	dir = t.TempDir()
	if err := pki.Init(dir, "", time.Now()); err != nil {
		t.Fatal(err)
	}
	c, err := pki.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if cert, key, err = c.Issue(dir, pki.IssueOptions{Name: "rack", Hosts: []string{"127.0.0.1"}}); err != nil {
		t.Fatal(err)
	}
	ca, _ = os.ReadFile(filepath.Join(dir, pki.CAFile))
	return dir, ca, cert, key
}

// serveTLSOnLoopback serves h with serveTLS on a real loopback socket.
func serveTLSOnLoopback(t *testing.T, h http.Handler, certs *certFiles) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := serveTLS(ctx, ln, h, certs, httpsrv.Options{}, quiet())
	t.Cleanup(func() { cancel(); <-done })
	return "https://" + ln.Addr().String()
}

// TestHTTPSListenerServesAnAgentRun: the rack's HTTPS listener (real TLS
// on loopback) serving the boot server's routes carries a whole machine
// agent run that verified the rack against the CA; an agent with another
// CA gets nothing; plain HTTP to the TLS port is not served.
func TestHTTPSListenerServesAnAgentRun(t *testing.T) {
	_, ca, certPath, keyPath := labCA(t)
	certs, err := loadCertFiles(certPath, keyPath, quiet())
	if err != nil {
		t.Fatal(err)
	}
	rack := racktest.New(t, quiet()) // its boot server routes and backend
	rack.OffAfterCommissioning()
	url := serveTLSOnLoopback(t, rack.Server.Config.Handler, certs)

	retry := machine.Retry{Initial: time.Millisecond, Max: 5 * time.Millisecond, Elapsed: 300 * time.Millisecond}
	c, err := machine.NewTLSClient(url, racktest.Machine, racktest.Token, ca, retry, quiet())
	if err != nil {
		t.Fatal(err)
	}
	roots := facts.Roots{Sys: "../machine/facts/testdata/sys", Proc: "../machine/facts/testdata/proc", Dev: "../machine/facts/testdata/dev"}
	var cs []facts.Collector
	for _, col := range facts.Default(roots, 0, quiet()) {
		if col.Name() != "lldp" {
			cs = append(cs, col)
		}
	}
	var console strings.Builder
	a := &machine.Agent{Client: c, Deployer: &machine.Deployer{Client: c, Log: quiet()}, Eraser: &machine.Eraser{Client: c, Log: quiet()},
		Collectors: cs, Disks: func() ([]agentapi.Disk, error) { return nil, nil }, Arch: "amd64", Log: quiet(), Console: &console}
	if err := a.Run(context.Background()); err != nil {
		t.Fatalf("agent run over the rack's HTTPS listener: %v\n%s", err, console.String())
	}
	if rs := rack.Results(); len(rs) != 1 || !rs[0].Success {
		t.Fatalf("results = %+v", rs)
	}

	_, otherCA, _, _ := labCA(t)
	c2, _ := machine.NewTLSClient(url, racktest.Machine, racktest.Token, otherCA, retry, quiet())
	if _, err := c2.Task(context.Background()); err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Errorf("agent with another CA: %v", err)
	}
	resp, err := http.Get("http" + strings.TrimPrefix(url, "https") + "/agent/vm-2/task")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("plain HTTP to the TLS port: %d", resp.StatusCode)
		}
	}
}

// TestRackLeaderServesHTTPS: a rack agent started with HTTPSAddr serves
// the agent API over TLS while it leads (startBootServers wires it).
func TestRackLeaderServesHTTPS(t *testing.T) {
	cli, _ := etcdtest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store := invtest.Apply(t, cli, invtest.Load(t, inventoryDoc))
	_, ca, certPath, keyPath := labCA(t)
	httpsPort := freeTCPPort(t)
	cfg := Config{Rack: "r1", TTL: 2 * time.Second, DHCP: dhcp.Options{Interfaces: []string{"lo"}, Port: freeUDPPort(t), ProxyPort: -1},
		HTTPAddr: fmt.Sprintf("127.0.0.1:%d", freeTCPPort(t)), HTTPSAddr: fmt.Sprintf("127.0.0.1:%d", httpsPort),
		TLSCert: certPath, TLSKey: keyPath, BootHTTP: boot.Options{BaseURL: "http://127.0.0.1:1"}}
	if u, err := cfg.TLSAgentURL(); err != nil || u != fmt.Sprintf("https://127.0.0.1:%d", httpsPort) {
		t.Fatalf("TLSAgentURL = %q, %v", u, err)
	}
	a := New(cfg, store, prometheus.NewRegistry(), quiet())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	var code int
	kilntest.Eventually(t, 30*time.Second, "the HTTPS listener", func() bool {
		resp, err := hc.Get(fmt.Sprintf("https://127.0.0.1:%d/agent/m1/task", httpsPort))
		if err != nil {
			return false
		}
		resp.Body.Close()
		code = resp.StatusCode
		return true
	})
	if code != http.StatusForbidden {
		t.Errorf("GET /agent/m1/task without a token over TLS: %d, want the boot server's 403", code)
	}
}

// TestCertReload: a renewed certificate is served from the next handshake
// on; a pair that does not load leaves the previous one in service.
func TestCertReload(t *testing.T) {
	dir, ca, certPath, keyPath := labCA(t)
	certs, err := loadCertFiles(certPath, keyPath, quiet())
	if err != nil {
		t.Fatal(err)
	}
	url := serveTLSOnLoopback(t, http.NotFoundHandler(), certs)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	serial := func() string {
		t.Helper()
		conn, err := tls.Dial("tcp", strings.TrimPrefix(url, "https://"), &tls.Config{RootCAs: pool})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	first := serial()

	// Renew: issue into another folder, then rename over the served files.
	c, _ := pki.Load(dir)
	newCert, newKey, err := c.Issue(dir, pki.IssueOptions{Name: "rack-renewed", Hosts: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	want := mustSerial(t, newCert)
	if err := os.Rename(newKey, keyPath); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(newCert, certPath); err != nil {
		t.Fatal(err)
	}
	if got := serial(); got != want || got == first {
		t.Errorf("after renewal: serial %s, want %s (was %s)", got, want, first)
	}
	// A broken key: the renewed certificate stays in service.
	os.WriteFile(keyPath, []byte("half written"), 0o600)
	if got := serial(); got != want {
		t.Errorf("after a broken key: serial %s, want %s", got, want)
	}
}

func mustSerial(t *testing.T, path string) string {
	t.Helper()
	certs, err := pki.ReadCerts(path)
	if err != nil {
		t.Fatal(err)
	}
	return certs[0].SerialNumber.String()
}

func TestTLSAgentURL(t *testing.T) {
	for _, tc := range []struct {
		cfg       Config
		want, err string
	}{
		{Config{}, "", ""},
		{Config{HTTPAddr: ":8080", HTTPSAddr: ":8443", BootHTTP: boot.Options{BaseURL: "http://10.42.0.1:8080"}}, "https://10.42.0.1:8443", ""},
		{Config{HTTPAddr: ":8080", HTTPSAddr: ":8443", AgentURL: "https://rack-1.lab:443/"}, "https://rack-1.lab:443", ""},
		{Config{HTTPAddr: ":8080", HTTPSAddr: ":8443"}, "", "give --agent-url, or --boot-url"},
		{Config{HTTPAddr: ":8080", HTTPSAddr: ":8443", AgentURL: "http://10.42.0.1:8443"}, "", "want https://host[:port]"},
		{Config{HTTPSAddr: ":8443", AgentURL: "https://x"}, "", "--http is needed"},
		{Config{AgentURL: "https://x"}, "", "needs the HTTPS listener"},
		{Config{HTTPAddr: ":8080", HTTPSAddr: "8443", BootHTTP: boot.Options{BaseURL: "http://h"}}, "", "HTTPS address"},
	} {
		got, err := tc.cfg.TLSAgentURL()
		if got != tc.want || (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%+v: %q, %v; want %q, %q", tc.cfg, got, err, tc.want, tc.err)
		}
	}
	if err := (Config{HTTPSAddr: ":8443"}).CheckTLS(); err == nil || !strings.Contains(err.Error(), "--tls-cert") {
		t.Errorf("CheckTLS without files: %v", err)
	}
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
