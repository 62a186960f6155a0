package power

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"
)

// errTLSVerify marks a BMC certificate that did not verify.
var errTLSVerify = errors.New("TLS verification failed")

// caBundle is a CA file (options.caFile) as it was last read. BMC
// certificates change (renewed, or replaced by a firmware update), and the
// file trusting them is replaced alongside: the bundle notices, so that a
// long-running rack agent picks the new file up without a restart.
type caBundle struct {
	path  string
	size  int64
	mtime time.Time
	pem   []byte
	pool  *x509.CertPool
}

// loadCA reads a CA file. It looks at the file before reading it, so that
// a change during the read shows as a change next time.
func loadCA(path string) (*caBundle, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("caFile: %w", err)
	}
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("caFile: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("caFile %s holds no PEM certificate", path)
	}
	return &caBundle{path: path, size: fi.Size(), mtime: fi.ModTime(), pem: pem, pool: pool}, nil
}

// changed reports whether the file's size or modification time differ
// from when it was read.
func (c *caBundle) changed() bool {
	fi, err := os.Stat(c.path)
	return err == nil && (fi.Size() != c.size || !fi.ModTime().Equal(c.mtime))
}

// reload reads the file again. It returns the new bundle when the
// certificates differ, nil when they are the same or the file can't be
// read now (it may be in the middle of being replaced: the bundle in use
// stays).
func (c *caBundle) reload() *caBundle {
	n, err := loadCA(c.path)
	if err != nil {
		return nil
	}
	if bytes.Equal(n.pem, c.pem) {
		c.size, c.mtime = n.size, n.mtime // touched, not changed
		return nil
	}
	return n
}
