package power

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/kilnhq/kiln/inventory/pki"
)

// errTLSVerify marks a BMC certificate that did not verify.
var errTLSVerify = errors.New("TLS verification failed")

// caBundle is a CA file (options.caFile) as it was last read. BMC
// certificates change (renewed, or replaced by a firmware update), and the
// file trusting them is replaced alongside: the bundle notices, so that a
// long-running rack agent picks the new file up without a restart.
type caBundle struct {
	path string
	file *pki.Reloader[caCerts]
	caCerts
}

// caCerts is what the file held when read.
type caCerts struct {
	pem  []byte
	pool *x509.CertPool
}

// loadCA reads a CA file.
func loadCA(path string) (*caBundle, error) {
	file, err := pki.NewReloader(func() (caCerts, error) {
		pem, err := os.ReadFile(path)
		if err != nil {
			return caCerts{}, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return caCerts{}, fmt.Errorf("%s holds no PEM certificate", path)
		}
		return caCerts{pem: pem, pool: pool}, nil
	}, path)
	if err != nil {
		return nil, fmt.Errorf("caFile: %w", err)
	}
	c, _, _ := file.Get()
	return &caBundle{path: path, file: file, caCerts: c}, nil
}

// changed reports whether the file's identity, size or modification time
// differ from when it was read.
func (c *caBundle) changed() bool { return c.file.Changed() }

// reload reads the file again. It returns the new bundle when the
// certificates differ, nil when they are the same or the file can't be
// read now (it may be in the middle of being replaced: the bundle in use
// stays).
func (c *caBundle) reload() *caBundle {
	n, err := c.file.Load()
	if err != nil || bytes.Equal(n.pem, c.pem) {
		return nil
	}
	return &caBundle{path: c.path, file: c.file, caCerts: n}
}
