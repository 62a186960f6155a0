// Package pki is the small certificate authority of `kiln certs`: a lab
// CA (ECDSA P-256) and the server and client certificates it signs, as
// PEM files in one folder. It is meant for labs and small sites; a site
// with its own PKI issues the same files from it instead. Reloader reads
// such files again when they change, for whoever serves or trusts them.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"time"
)

// File names in the folder.
const (
	CAFile    = "ca.pem"
	CAKeyFile = "ca-key.pem"
)

// CAValidity is how long the lab CA is valid.
const CAValidity = 5 * 365 * 24 * time.Hour

// DefaultDays is how long an issued certificate is valid unless told.
const DefaultDays = 365

// IssueOptions say what certificate to issue.
type IssueOptions struct {
	Name   string   // the files' base name and the CN (etcd's user name for a client certificate)
	Hosts  []string // DNS names or IP addresses (server certificates)
	Client bool     // a client certificate instead of a server one
	Days   int      // validity; default DefaultDays
	Now    func() time.Time
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// Paths of name's certificate and key in dir.
func Paths(dir, name string) (cert, key string) {
	return filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
}

// Init makes a CA in dir (created if needed): ca.pem and ca-key.pem
// (0600). It refuses to overwrite either file.
func Init(dir, commonName string, now time.Time) error {
	if commonName == "" {
		commonName = "Kiln lab CA"
	}
	certPath, keyPath := filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile)
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%s exists: refusing to overwrite a CA (remove it first if you mean to start over; every certificate it signed stops being trusted)", p)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"Kiln"}},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("CA certificate: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("CA folder: %w", err)
	}
	return writePair(certPath, keyPath, der, key)
}

// CA is a loaded CA.
type CA struct {
	Cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// Load reads the CA of dir.
func Load(dir string) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile)
	certs, err := ReadCerts(certPath)
	if err != nil {
		return nil, fmt.Errorf("CA: %w (run kiln certs init --dir %s first)", err, dir)
	}
	kb, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	blk, _ := pem.Decode(kb)
	if blk == nil || blk.Type != "EC PRIVATE KEY" {
		return nil, fmt.Errorf("CA key %s: no EC PRIVATE KEY PEM block", keyPath)
	}
	key, err := x509.ParseECPrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("CA key %s: %w", keyPath, err)
	}
	c := certs[0]
	if !c.IsCA {
		return nil, fmt.Errorf("%s is not a CA certificate", certPath)
	}
	if pub, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) {
		return nil, fmt.Errorf("CA key %s does not belong to %s", keyPath, certPath)
	}
	return &CA{Cert: c, key: key}, nil
}

// Issue signs a certificate and writes NAME.pem and NAME-key.pem (0600)
// into dir. It refuses to overwrite either file.
func (ca *CA) Issue(dir string, o IssueOptions) (certPath, keyPath string, err error) {
	if !nameRE.MatchString(o.Name) {
		return "", "", fmt.Errorf("name %q: use letters, digits, '.', '_' and '-' (up to 63), starting with a letter or digit", o.Name)
	}
	if o.Name == "ca" || o.Name == "ca-key" {
		return "", "", fmt.Errorf("name %q is the CA's own file", o.Name)
	}
	if !o.Client && len(o.Hosts) == 0 {
		return "", "", errors.New("a server certificate needs at least one --host (the DNS name or IP address clients use)")
	}
	if o.Days == 0 {
		o.Days = DefaultDays
	}
	if o.Days < 0 {
		return "", "", fmt.Errorf("days %d: must be positive", o.Days)
	}
	now := time.Now()
	if o.Now != nil {
		now = o.Now()
	}
	notAfter := now.Add(time.Duration(o.Days) * 24 * time.Hour)
	if notAfter.After(ca.Cert.NotAfter) {
		return "", "", fmt.Errorf("%d days would outlive the CA (valid until %s)", o.Days, ca.Cert.NotAfter.Format(time.DateOnly))
	}
	certPath, keyPath = Paths(dir, o.Name)
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Lstat(p); err == nil {
			return "", "", fmt.Errorf("%s exists: refusing to overwrite it", p)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	serial, err := newSerial()
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: o.Name},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if o.Client {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	for _, h := range o.Hosts {
		switch ip := net.ParseIP(h); {
		case ip != nil:
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		case validDNS(h):
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		default:
			return "", "", fmt.Errorf("host %q is neither an IP address nor a DNS name", h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return "", "", fmt.Errorf("sign %s: %w", o.Name, err)
	}
	return certPath, keyPath, writePair(certPath, keyPath, der, key)
}

// validDNS accepts a host name, with an optional leading wildcard label.
var dnsRE = regexp.MustCompile(`^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)

func validDNS(h string) bool { return len(h) <= 253 && dnsRE.MatchString(h) }

// ReadCerts reads the PEM certificates of a file.
func ReadCerts(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseCerts(b, path)
}

// ParseCerts parses PEM certificates; from names the source in errors.
func ParseCerts(b []byte, from string) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", from, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s holds no PEM certificate", from)
	}
	return certs, nil
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return s, nil
}

// writePair writes the certificate (0644) and key (0600), the key first,
// neither over an existing file.
func writePair(certPath, keyPath string, der []byte, key *ecdsa.PrivateKey) error {
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := writeNew(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return err
	}
	if err := writeNew(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		os.Remove(keyPath)
		return err
	}
	return nil
}

func writeNew(path string, b []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Pool is a certificate pool of the PEM certificates in b only.
func Pool(b []byte, from string) (*x509.CertPool, error) {
	certs, err := ParseCerts(b, from)
	if err != nil {
		return nil, err
	}
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p, nil
}
