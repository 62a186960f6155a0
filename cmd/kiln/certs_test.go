package main

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/agents/rack"

	"github.com/kilnhq/kiln/inventory/pki"
)

func TestCertsCommand(t *testing.T) {
	dir := t.TempDir()
	kiln := func(args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := run(context.Background(), args, &out, &errOut)
		return code, out.String(), errOut.String()
	}
	if code, _, e := kiln("certs", "init", "--dir", dir); code != exitOK {
		t.Fatalf("init: %d %s", code, e)
	}
	if code, _, e := kiln("certs", "init", "--dir", dir); code != exitFail || !strings.Contains(e, "refusing to overwrite") {
		t.Errorf("second init: %d %s", code, e)
	}
	if code, out, e := kiln("certs", "issue", "--dir", dir, "--name", "rack-1", "--host", "10.42.0.1", "--host", "rack-1.lab"); code != exitOK || !strings.Contains(out, "server certificate") {
		t.Fatalf("issue server: %d %s %s", code, out, e)
	}
	if code, _, e := kiln("certs", "issue", "--dir", dir, "--name", "region", "--client", "--days", "10"); code != exitOK {
		t.Fatalf("issue client: %d %s", code, e)
	}
	c, err := pki.ReadCerts(filepath.Join(dir, "rack-1.pem"))
	if err != nil || len(c[0].IPAddresses) != 1 || len(c[0].DNSNames) != 1 {
		t.Errorf("rack-1.pem: %v %+v", err, c)
	}
	if _, err := os.Stat(filepath.Join(dir, "region-key.pem")); err != nil {
		t.Error(err)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"certs"}, exitUsage, "Usage: kiln certs"},
		{[]string{"certs", "sign"}, exitUsage, "unknown command"},
		{[]string{"certs", "init"}, exitUsage, "--dir is required"},
		{[]string{"certs", "issue", "--dir", dir}, exitUsage, "--name is required"},
		{[]string{"certs", "issue", "--dir", dir, "--name", "x", "--client", "--host", "h"}, exitUsage, "--host is for server"},
		{[]string{"certs", "issue", "--dir", dir, "--name", "x"}, exitFail, "needs at least one --host"},
		{[]string{"certs", "issue", "--dir", t.TempDir(), "--name", "x", "--host", "h"}, exitFail, "kiln certs init --dir"},
	} {
		if code, _, e := kiln(tc.args...); code != tc.code || !strings.Contains(e, tc.want) {
			t.Errorf("kiln %v = %d %q; want %d %q", tc.args, code, e, tc.code, tc.want)
		}
	}
}

// TestRackTLSFlags: kiln rack's TLS flags with certificates from kiln
// certs; a missing piece is a clear error before anything starts.
func TestRackTLSFlags(t *testing.T) {
	dir := t.TempDir()
	var out, errOut bytes.Buffer
	if run(context.Background(), []string{"certs", "init", "--dir", dir}, &out, &errOut) != exitOK ||
		run(context.Background(), []string{"certs", "issue", "--dir", dir, "--name", "rack", "--host", "10.42.0.1"}, &out, &errOut) != exitOK {
		t.Fatal(errOut.String())
	}
	cert, key := filepath.Join(dir, "rack.pem"), filepath.Join(dir, "rack-key.pem")
	r := rackFlags{rack: "r1", httpAddr: ":8080", httpsAddr: ":8443", bootURL: "http://10.42.0.1:8080", tlsCert: cert, tlsKey: key}
	c, err := r.config()
	if err != nil || c.AgentURL != "https://10.42.0.1:8443" || c.HTTPSAddr != ":8443" {
		t.Fatalf("config: %+v %v", c, err)
	}
	for _, tc := range []struct {
		edit func(*rackFlags)
		want string
	}{
		{func(r *rackFlags) { r.bootURL = "" }, "--agent-url, or --boot-url"},
		{func(r *rackFlags) { r.tlsKey = "" }, "--tls-cert, --tls-key"},
		{func(r *rackFlags) { r.tlsKey = cert }, "TLS certificate"},
		{func(r *rackFlags) { r.agentURL = "http://10.42.0.1:8443" }, "want https://"},
	} {
		r2 := r
		tc.edit(&r2)
		if _, err := r2.config(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config: %v, want %q", err, tc.want)
		}
	}
}

// TestRackDiscoveryFlags: the discovery bounds reach the rack's config;
// nonsense is refused before anything starts.
func TestRackDiscoveryFlags(t *testing.T) {
	parse := func(args ...string) (rack.Config, error) {
		var r rackFlags
		fs := flag.NewFlagSet("rack", flag.ContinueOnError)
		r.register(fs)
		if err := fs.Parse(append([]string{"--rack", "r1"}, args...)); err != nil {
			t.Fatal(err)
		}
		return r.config()
	}
	c, err := parse()
	if err != nil || c.MaxDiscovered != 1024 || c.DiscoveredTTL != 24*time.Hour {
		t.Fatalf("defaults: %d %s %v", c.MaxDiscovered, c.DiscoveredTTL, err)
	}
	c, err = parse("--max-discovered", "7", "--discovered-ttl", "2h")
	if err != nil || c.MaxDiscovered != 7 || c.DiscoveredTTL != 2*time.Hour {
		t.Fatalf("set: %d %s %v", c.MaxDiscovered, c.DiscoveredTTL, err)
	}
	for _, args := range [][]string{{"--max-discovered", "-1"}, {"--discovered-ttl", "10s"}} {
		if _, err := parse(args...); err == nil || !strings.Contains(err.Error(), "--max-discovered") {
			t.Errorf("%v: %v, want a clear error", args, err)
		}
	}
}
