package etcd

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

type pair struct{ cert, key string }

// issue writes a certificate signed by ca (self-signed when ca is nil).
func issue(t *testing.T, dir, name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, isCA bool, usage x509.ExtKeyUsage) (pair, *x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		IsCA:         isCA, BasicConstraintsValid: true,
	}
	if !isCA {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{usage}
	}
	parent, signer := tmpl, key
	if ca != nil {
		parent, signer = ca, caKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	kb, _ := x509.MarshalECPrivateKey(key)
	p := pair{filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")}
	os.WriteFile(p.cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(p.key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return p, cert, key
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// An external cluster with TLS and client-certificate authentication:
// Connect with --etcd-ca/--etcd-cert/--etcd-key works, without the client
// certificate it is refused.
func TestConnectTLSClientCert(t *testing.T) {
	dir := t.TempDir()
	caPair, ca, caKey := issue(t, dir, "ca", nil, nil, true, 0)
	server, _, _ := issue(t, dir, "server", ca, caKey, false, x509.ExtKeyUsageServerAuth)
	client, _, _ := issue(t, dir, "client", ca, caKey, false, x509.ExtKeyUsageClientAuth)

	curl, _ := url.Parse("https://" + freePort(t))
	purl, _ := url.Parse("http://" + freePort(t))
	ec := embed.NewConfig()
	ec.Dir = filepath.Join(dir, "data")
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{*curl}, []url.URL{*curl}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{*purl}, []url.URL{*purl}
	ec.InitialCluster = ec.Name + "=" + purl.String()
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	ec.ClientTLSInfo.CertFile, ec.ClientTLSInfo.KeyFile = server.cert, server.key
	ec.ClientTLSInfo.TrustedCAFile, ec.ClientTLSInfo.ClientCertAuth = caPair.cert, true
	e, err := embed.StartEtcd(ec)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		t.Fatal("etcd not ready")
	}

	cli, err := Connect(Config{Endpoints: []string{curl.String()}, CAFile: caPair.cert, CertFile: client.cert, KeyFile: client.key})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("put over TLS with a client certificate: %v", err)
	}

	anon, err := Connect(Config{Endpoints: []string{curl.String()}, CAFile: caPair.cert})
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	actx, acancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer acancel()
	if _, err := anon.Get(actx, "k"); err == nil {
		t.Fatal("a client without a certificate was let in")
	}

	if _, err := Connect(Config{Endpoints: []string{curl.String()}, CAFile: filepath.Join(dir, "missing.pem")}); err == nil {
		t.Fatal("a missing CA file should be an error")
	}
}
