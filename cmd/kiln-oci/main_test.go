package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// staticBinary builds a tiny static program to stand in for kiln.
func staticBinary(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte("package main\nfunc main() {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "kiln")
	cmd := exec.Command("go", "build", "-o", bin, src)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GO111MODULE=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func TestBuild(t *testing.T) {
	bin := staticBinary(t)
	certs := filepath.Join(t.TempDir(), "ca.crt")
	os.WriteFile(certs, []byte("-----BEGIN CERTIFICATE-----\n"), 0o644)
	ipxeDir := t.TempDir()
	os.WriteFile(filepath.Join(ipxeDir, "ipxe.efi"), []byte("efi"), 0o644)
	os.WriteFile(filepath.Join(ipxeDir, "ipxe.iso"), []byte("not copied"), 0o644)
	cfg := Config{Kiln: bin, CACerts: certs, IPXEDir: ipxeDir, Tag: "v1", Created: time.Unix(0, 0), Out: t.TempDir()}

	path, _, err := Build(cfg, Images[1])
	if err != nil {
		t.Fatal(err)
	}
	first, _ := os.ReadFile(path)
	if _, _, err := Build(cfg, Images[1]); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(path); !bytes.Equal(first, again) {
		t.Error("two builds of the same input differ: the archive is not reproducible")
	}

	dir := t.TempDir()
	untar(t, first, dir)
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	im, _ := idx.IndexManifest()
	if len(im.Manifests) != 1 || im.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "v1" {
		t.Fatalf("index: %+v", im.Manifests)
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	if mt, _ := img.MediaType(); mt != types.OCIManifestSchema1 {
		t.Errorf("manifest media type %s", mt)
	}
	cf, _ := img.ConfigFile()
	if cf.Config.User != "65532:65532" || strings.Join(cf.Config.Entrypoint, " ") != "/usr/local/bin/kiln" || strings.Join(cf.Config.Cmd, " ") != "rack" || cf.OS != "linux" {
		t.Errorf("config: user %q entrypoint %q cmd %q os %q", cf.Config.User, cf.Config.Entrypoint, cf.Config.Cmd, cf.OS)
	}
	files := map[string]*tar.Header{}
	tr := tar.NewReader(mutate.Extract(img))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files[strings.TrimSuffix(h.Name, "/")] = h
	}
	for name, want := range map[string]int64{"usr/local/bin/kiln": 0o755, "etc/passwd": 0o644, "etc/ssl/certs/ca-certificates.crt": 0o644,
		"usr/lib/ipxe/ipxe.efi": 0o644, "tmp": 0o1777, "var/cache/kiln": 0o700} {
		if h := files[name]; h == nil || h.Mode != want {
			t.Errorf("%s: %+v, want mode %o", name, h, want)
		}
	}
	// setcap cap_net_bind_service,cap_net_raw=ep writes these 20 bytes.
	wantCaps := "\x01\x00\x00\x02\x00\x24\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
	if got := files["usr/local/bin/kiln"].PAXRecords["SCHILY.xattr.security.capability"]; got != wantCaps {
		t.Errorf("the rack image's kiln has file capabilities %q, want %q", got, wantCaps)
	}
	if h := files["var/cache/kiln"]; h == nil || h.Uid != UID {
		t.Error("the cache folder is not the user's")
	}
	for name := range files {
		if strings.HasPrefix(name, "bin/") || strings.HasSuffix(name, "/sh") || name == "usr/lib/ipxe/ipxe.iso" {
			t.Errorf("unexpected file in the image: %s", name)
		}
	}
}

func TestBuildRefusesADynamicBinary(t *testing.T) {
	dyn, err := exec.LookPath("true")
	if err != nil {
		t.Skip(err)
	}
	_, _, err = Build(Config{Kiln: dyn, Out: t.TempDir()}, Images[0])
	if err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Fatalf("a dynamic binary: %v", err)
	}
}

func untar(t *testing.T, archive []byte, to string) {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(archive))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(to, filepath.Clean("/"+h.Name))
		if h.Typeflag == tar.TypeDir {
			os.MkdirAll(p, 0o755)
			continue
		}
		b, _ := io.ReadAll(tr)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
