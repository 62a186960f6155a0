package machine

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strings"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/fat16"
	"gopkg.in/yaml.v3"
)

// SeedLabel is the volume label cloud-init's NoCloud datasource looks for.
const SeedLabel = "CIDATA"

// seedFiles are the NoCloud files, and whether each must be served.
var seedFiles = []struct {
	name     string
	required bool
}{
	{"meta-data", true},
	{"user-data", true},
	{"network-config", true},
	{"vendor-data", false},
}

// fetchSeed fetches the NoCloud files from the metadata service
// (task.MetadataURL, with the boot token).
func (d *Deployer) fetchSeed(ctx context.Context, base string) (map[string][]byte, error) {
	if !strings.HasSuffix(base, "/") {
		base += "/"
	}
	files := map[string][]byte{}
	for _, sf := range seedFiles {
		b, err := d.Client.Get(ctx, base+sf.name)
		var se *StatusError
		if !sf.required && errors.As(err, &se) && se.Code == http.StatusNotFound {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("NoCloud %s: %w", sf.name, err)
		}
		files[sf.name] = b
	}
	if d.CA != nil {
		if err := addSeedCA(files, d.CA); err != nil {
			return nil, fmt.Errorf("NoCloud seed: %w", err)
		}
	}
	return files, nil
}

// cloudConfigHeader starts a cloud-config document.
const cloudConfigHeader = "#cloud-config"

// addSeedCA makes the deployed OS trust the rack's CA: cloud-init's
// ca_certs module (init stage) adds it to the system's trust store before
// phone_home (final stage) posts to the rack's https URL. The
// vendor-data gets ca_certs.trusted; the user-data is changed only when
// it sets ca_certs itself (a user-data key replaces the vendor-data's),
// and then gets the CA appended to its own list.
func addSeedCA(files map[string][]byte, caPEM []byte) error {
	vd, ok := files["vendor-data"]
	if !ok {
		vd = []byte(cloudConfigHeader + "\n{}\n")
	}
	out, err := withCA(vd, caPEM, true)
	if err != nil {
		return fmt.Errorf("vendor-data: %w", err)
	}
	files["vendor-data"] = out
	if ud, ok := files["user-data"]; ok {
		out, err := withCA(ud, caPEM, false)
		if err != nil {
			return fmt.Errorf("user-data: %w", err)
		}
		files["user-data"] = out
	}
	return nil
}

// withCA adds caPEM to the ca_certs.trusted list of a #cloud-config
// document. Unless always, a document that is not a cloud-config or has
// no ca_certs key is returned as it is.
func withCA(doc, caPEM []byte, always bool) ([]byte, error) {
	first, _, _ := strings.Cut(string(doc), "\n")
	if strings.TrimSpace(first) != cloudConfigHeader {
		if always {
			return nil, fmt.Errorf("not a %s document: cannot give the deployed OS the rack's CA", cloudConfigHeader)
		}
		return doc, nil
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(doc, &cfg); err != nil {
		if always {
			return nil, fmt.Errorf("parse: %w", err)
		}
		return doc, nil // cloud-init will report it; not ours to fix
	}
	if cfg == nil {
		cfg = map[string]any{}
	}
	key := "ca_certs"
	if _, ok := cfg[key]; !ok {
		if _, ok := cfg["ca-certs"]; ok {
			key = "ca-certs" // the deprecated spelling, still read by 22.4
		} else if !always {
			return doc, nil
		}
	}
	cc, _ := cfg[key].(map[string]any)
	if cc == nil {
		cc = map[string]any{}
	}
	pem := string(caPEM)
	trusted, _ := cc["trusted"].([]any)
	for _, t := range trusted {
		if t == pem {
			return doc, nil
		}
	}
	cc["trusted"] = append(trusted, pem)
	cfg[key] = cc
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	return append([]byte(cloudConfigHeader+"\n"), b...), nil
}

// writeSeedFS makes a FAT16 filesystem labelled CIDATA of size bytes at
// off in f and writes the files into its root.
func writeSeedFS(f *os.File, off, size int64, files map[string][]byte) error {
	fs, err := fat16.Create(file.New(f, false), size, off, 512, SeedLabel, false)
	if err != nil {
		return fmt.Errorf("make FAT filesystem: %w", err)
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fh, err := fs.OpenFile("/"+n, os.O_CREATE|os.O_RDWR)
		if err != nil {
			return fmt.Errorf("create %s: %w", n, err)
		}
		if _, err := fh.Write(files[n]); err != nil {
			fh.Close()
			return fmt.Errorf("write %s: %w", n, err)
		}
		if err := fh.Close(); err != nil {
			return fmt.Errorf("close %s: %w", n, err)
		}
	}
	return nil
}
