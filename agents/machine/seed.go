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
	return files, nil
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
