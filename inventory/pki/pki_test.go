package pki

import (
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func issue(t *testing.T, dir string, o IssueOptions) *x509.Certificate {
	t.Helper()
	ca, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath, err := ca.Issue(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(keyPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key %s: %v, mode %v; want 0600", keyPath, err, fi.Mode())
	}
	certs, err := ReadCerts(certPath)
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

func TestCAIssuesVerifiableServerAndClientCertificates(t *testing.T) {
	dir := t.TempDir()
	if err := Init(dir, "", time.Now()); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, CAKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("CA key: %v %v, want 0600", err, fi)
	}
	caPEM, _ := os.ReadFile(filepath.Join(dir, CAFile))
	pool, err := Pool(caPEM, "ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := Load(dir)
	if ca.Cert.PublicKeyAlgorithm != x509.ECDSA || ca.Cert.NotAfter.Before(time.Now().Add(4*365*24*time.Hour)) {
		t.Errorf("CA: %v until %v; want ECDSA for 5 years", ca.Cert.PublicKeyAlgorithm, ca.Cert.NotAfter)
	}

	srv := issue(t, dir, IssueOptions{Name: "rack-1", Hosts: []string{"10.42.0.1", "rack-1.lab"}})
	opts := x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	for _, name := range []string{"10.42.0.1", "rack-1.lab"} {
		opts.DNSName = name
		if _, err := srv.Verify(opts); err != nil {
			t.Errorf("server certificate for %s: %v", name, err)
		}
	}
	opts.DNSName = "10.42.0.2"
	if _, err := srv.Verify(opts); err == nil {
		t.Error("server certificate verified for a host it was not issued for")
	}

	cli := issue(t, dir, IssueOptions{Name: "rack-r1", Client: true, Days: 30})
	if cli.Subject.CommonName != "rack-r1" {
		t.Errorf("client CN %q", cli.Subject.CommonName)
	}
	if _, err := cli.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate: %v", err)
	}
	if _, err := cli.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("a client certificate verified as a server certificate")
	}
	if d := time.Until(cli.NotAfter); d < 29*24*time.Hour || d > 31*24*time.Hour {
		t.Errorf("client certificate valid for %v, want 30 days", d)
	}

	// Another CA's view: the certificate does not verify.
	other := t.TempDir()
	if err := Init(other, "other", time.Now()); err != nil {
		t.Fatal(err)
	}
	otherPEM, _ := os.ReadFile(filepath.Join(other, CAFile))
	otherPool, _ := Pool(otherPEM, "other")
	if _, err := srv.Verify(x509.VerifyOptions{Roots: otherPool, DNSName: "10.42.0.1"}); err == nil {
		t.Error("server certificate verified by another CA")
	}

	// An independent peer: OpenSSL.
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	for _, n := range []string{"rack-1", "rack-r1"} {
		out, err := exec.Command("openssl", "verify", "-CAfile", filepath.Join(dir, CAFile), filepath.Join(dir, n+".pem")).CombinedOutput()
		if err != nil || !strings.Contains(string(out), ": OK") {
			t.Errorf("openssl verify %s: %v\n%s", n, err, out)
		}
	}
	out, err := exec.Command("openssl", "verify", "-CAfile", filepath.Join(other, CAFile), filepath.Join(dir, "rack-1.pem")).CombinedOutput()
	if err == nil {
		t.Errorf("openssl verified rack-1 against another CA:\n%s", out)
	}
	out, err = exec.Command("openssl", "x509", "-noout", "-text", "-in", filepath.Join(dir, "rack-1.pem")).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl x509: %v\n%s", err, out)
	}
	for _, want := range []string{"IP Address:10.42.0.1", "DNS:rack-1.lab", "TLS Web Server Authentication", "CN = rack-1", "prime256v1"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("openssl x509 -text lacks %q:\n%s", want, out)
		}
	}
	out, err = exec.Command("openssl", "x509", "-noout", "-text", "-in", filepath.Join(dir, CAFile)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "CA:TRUE") {
		t.Errorf("openssl: the CA is not CA:TRUE: %v\n%s", err, out)
	}
	out, err = exec.Command("openssl", "ec", "-noout", "-check", "-in", filepath.Join(dir, "rack-1-key.pem")).CombinedOutput()
	if err != nil {
		t.Errorf("openssl ec -check: %v\n%s", err, out)
	}
}

func TestCertsRefuseBadInputAndOverwrites(t *testing.T) {
	dir := t.TempDir()
	if err := Init(dir, "", time.Now()); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if err := Init(dir, "", time.Now()); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Errorf("second init: %v", err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, CAKeyFile)); string(after) != string(before) {
		t.Error("second init changed the CA key")
	}
	ca, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ca.Issue(dir, IssueOptions{Name: "r", Hosts: []string{"r.lab"}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		o    IssueOptions
		want string
	}{
		{IssueOptions{Name: "r", Hosts: []string{"r.lab"}}, "refusing to overwrite"},
		{IssueOptions{Name: "../x", Hosts: []string{"x"}}, "use letters"},
		{IssueOptions{Name: "ca", Client: true}, "CA's own"},
		{IssueOptions{Name: "s"}, "needs at least one --host"},
		{IssueOptions{Name: "s", Hosts: []string{"bad host!"}}, "neither an IP"},
		{IssueOptions{Name: "s", Hosts: []string{"s"}, Days: 3000}, "outlive the CA"},
		{IssueOptions{Name: "s", Hosts: []string{"s"}, Days: -1}, "positive"},
	} {
		if _, _, err := ca.Issue(dir, tc.o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Issue(%+v) = %v, want %q", tc.o, err, tc.want)
		}
	}
	if _, err := Load(t.TempDir()); err == nil || !strings.Contains(err.Error(), "kiln certs init") {
		t.Errorf("Load of an empty folder: %v", err)
	}
}
