// Command kiln-oci writes Kiln's container images as OCI archives without
// a container engine, as ko does: the static kiln binary on an empty base
// with /etc/passwd, /etc/group, the CA bundle and the directories Kiln
// writes, run as the non-root user kiln (65532). There is no shell, no
// libc and no package manager in the image.
//
//	CGO_ENABLED=0 go build -trimpath -o dist/kiln ./cmd/kiln
//	go run ./cmd/kiln-oci --kiln dist/kiln --out dist --tag v0.1.0
//
// writes dist/kiln.oci.tar (kiln server) and dist/kiln-rack.oci.tar
// (kiln rack): entrypoint kiln, command the subcommand. They are tarred OCI
// image layouts, which skopeo, podman load and containerd's ctr import
// read. The rack
// image's binary carries NET_BIND_SERVICE and NET_RAW as file
// capabilities, so that its non-root user holds them under Kubernetes.
package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// UID and GID of the image's user kiln (distroless's "nonroot" number).
const (
	UID = 65532
	GID = 65532
)

// Image is one image written by Build.
type Image struct {
	Name    string   // file name without .oci.tar, and the title
	Cmd     []string // the subcommand; the entrypoint is the binary, so a pod's args replace it
	Ports   []string // exposed ports, e.g. "9420/tcp"
	Volumes []string
	// Caps are file capabilities (security.capability) of the kiln
	// binary: a runtime drops a non-root process's capabilities when it
	// executes a binary without them (Kubernetes has no ambient ones).
	Caps []uint
}

// Images are Kiln's images: the region server and the rack agent.
var Images = []Image{
	{Name: "kiln", Cmd: []string{"server"}, Ports: []string{"9420/tcp", "9443/tcp", "2379/tcp", "2380/tcp"},
		Volumes: []string{"/var/lib/kiln"}},
	{Name: "kiln-rack", Cmd: []string{"rack"}, Ports: []string{"67/udp", "69/udp", "80/tcp", "8080/tcp", "9421/tcp"},
		Volumes: []string{"/var/cache/kiln"}, Caps: []uint{capNetBindService, capNetRaw}},
}

// The rack agent's two capabilities (linux/capability.h).
const (
	capNetBindService = 10
	capNetRaw         = 13
)

// fileCaps is a security.capability value (struct vfs_cap_data, revision
// 2): caps permitted and effective, none inheritable; what
// `setcap cap_net_bind_service,cap_net_raw=ep` writes.
func fileCaps(caps []uint) []byte {
	var perm [2]uint32
	for _, c := range caps {
		perm[c/32] |= 1 << (c % 32)
	}
	b := binary.LittleEndian.AppendUint32(nil, 0x02000000|0x1) // VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE
	for _, p := range perm {
		b = binary.LittleEndian.AppendUint32(b, p)
		b = binary.LittleEndian.AppendUint32(b, 0) // inheritable
	}
	return b
}

// Config says what Build puts in the images.
type Config struct {
	Kiln    string    // the static kiln binary
	CACerts string    // PEM bundle for /etc/ssl/certs/ca-certificates.crt; "" for none
	IPXEDir string    // iPXE binaries (*.efi, *.kpxe) for /usr/lib/ipxe, the rack's --ipxe-dir; "" for none
	Tag     string    // the images' ref name in the archive
	Created time.Time // file times and the config's creation time (reproducible builds)
	Out     string    // folder for the archives
}

func main() {
	var c Config
	flag.StringVar(&c.Kiln, "kiln", "dist/kiln", "the static kiln binary (CGO_ENABLED=0)")
	flag.StringVar(&c.CACerts, "ca-certs", "/etc/ssl/certs/ca-certificates.crt", "CA bundle to put in the image (\"\" for none)")
	flag.StringVar(&c.IPXEDir, "ipxe-dir", "/usr/lib/ipxe", "iPXE binaries (Debian's ipxe package) to put in /usr/lib/ipxe (\"\" for none)")
	flag.StringVar(&c.Tag, "tag", "dev", "image tag (the ref name in the archive)")
	flag.StringVar(&c.Out, "out", "dist", "folder for the .oci.tar archives")
	flag.Parse()
	c.Created = time.Unix(0, 0).UTC()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kiln-oci: SOURCE_DATE_EPOCH:", err)
			os.Exit(2)
		}
		c.Created = time.Unix(sec, 0).UTC()
	}
	for _, im := range Images {
		path, size, err := Build(c, im)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kiln-oci:", err)
			os.Exit(1)
		}
		fmt.Printf("%s (%.1f MiB)\n", path, float64(size)/(1<<20))
	}
}

// Build writes one image's archive to c.Out and returns its path and size.
func Build(c Config, im Image) (string, int64, error) {
	if err := checkStatic(c.Kiln); err != nil {
		return "", 0, err
	}
	rootfs, err := rootLayer(c, im)
	if err != nil {
		return "", 0, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(rootfs)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return "", 0, fmt.Errorf("layer: %w", err)
	}
	img, err := mutate.AppendLayers(mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON), layer)
	if err != nil {
		return "", 0, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return "", 0, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Created = v1.Time{Time: c.Created}
	cf.Config.User = fmt.Sprintf("%d:%d", UID, GID)
	cf.Config.Entrypoint = []string{"/usr/local/bin/kiln"}
	cf.Config.Cmd = im.Cmd
	cf.Config.WorkingDir = "/"
	cf.Config.Env = []string{"PATH=/usr/local/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"}
	cf.Config.ExposedPorts = map[string]struct{}{}
	for _, p := range im.Ports {
		cf.Config.ExposedPorts[p] = struct{}{}
	}
	cf.Config.Volumes = map[string]struct{}{}
	for _, v := range im.Volumes {
		cf.Config.Volumes[v] = struct{}{}
	}
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.title":   im.Name,
		"org.opencontainers.image.source":  "https://github.com/kilnhq/kiln",
		"org.opencontainers.image.version": c.Tag,
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return "", 0, err
	}
	dir, err := os.MkdirTemp("", "kiln-oci-")
	if err != nil {
		return "", 0, err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return "", 0, err
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": c.Tag})); err != nil {
		return "", 0, fmt.Errorf("write layout: %w", err)
	}
	if err := os.MkdirAll(c.Out, 0o755); err != nil {
		return "", 0, err
	}
	out := filepath.Join(c.Out, im.Name+".oci.tar")
	size, err := tarDir(dir, out, c.Created)
	return out, size, err
}

// checkStatic refuses a binary that needs a dynamic loader: the image has
// no libc.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; build it with CGO_ENABLED=0", path)
		}
	}
	return nil
}

// rootLayer is the image's only layer, as an uncompressed tar.
func rootLayer(c Config, im Image) ([]byte, error) {
	kiln, err := os.ReadFile(c.Kiln)
	if err != nil {
		return nil, err
	}
	var certs []byte
	if c.CACerts != "" {
		if certs, err = os.ReadFile(c.CACerts); err != nil {
			return nil, fmt.Errorf("CA bundle: %w (--ca-certs \"\" builds without one)", err)
		}
	}
	ipxe, err := ipxeFiles(c.IPXEDir)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	l := &layer{tw: tar.NewWriter(&buf), mtime: c.Created}
	l.dir("etc", 0o755, 0)
	l.file("etc/passwd", 0o644, fmt.Appendf(nil, "root:x:0:0:root:/root:/sbin/nologin\nkiln:x:%d:%d:kiln:/var/lib/kiln:/sbin/nologin\n", UID, GID), nil)
	l.file("etc/group", 0o644, fmt.Appendf(nil, "root:x:0:\nkiln:x:%d:\n", GID), nil)
	l.dir("etc/kiln", 0o755, 0)
	l.dir("etc/ssl", 0o755, 0)
	l.dir("etc/ssl/certs", 0o755, 0)
	if certs != nil {
		l.file("etc/ssl/certs/ca-certificates.crt", 0o644, certs, nil)
	}
	for _, d := range []string{"proc", "sys"} {
		l.dir(d, 0o555, 0)
	}
	l.dir("tmp", 0o1777, 0)
	for _, d := range []string{"dev", "usr", "usr/local", "usr/local/bin"} {
		l.dir(d, 0o755, 0)
	}
	var xattrs map[string]string
	if len(im.Caps) > 0 {
		xattrs = map[string]string{"SCHILY.xattr.security.capability": string(fileCaps(im.Caps))}
	}
	l.file("usr/local/bin/kiln", 0o755, kiln, xattrs)
	if len(ipxe) > 0 {
		l.dir("usr/lib", 0o755, 0)
		l.dir("usr/lib/ipxe", 0o755, 0)
		for _, f := range ipxe {
			l.file("usr/lib/ipxe/"+f.name, 0o644, f.data, nil)
		}
	}
	for _, d := range []string{"var", "var/lib", "var/cache"} {
		l.dir(d, 0o755, 0)
	}
	l.dir("var/lib/kiln", 0o700, UID)
	l.dir("var/cache/kiln", 0o700, UID)
	if err := l.close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// layer writes tar entries with one time and keeps the first error, as
// bufio.Writer does, so that a layer reads as the list of what is in it.
type layer struct {
	tw    *tar.Writer
	mtime time.Time
	err   error
}

func (l *layer) dir(name string, mode int64, uid int) {
	if l.err == nil {
		l.err = l.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, Uid: uid, Gid: uid, ModTime: l.mtime, Format: tar.FormatPAX})
	}
}

// file writes a regular file owned by root; pax holds its extended
// attributes (file capabilities), if any.
func (l *layer) file(name string, mode int64, b []byte, pax map[string]string) {
	if l.err == nil {
		l.err = l.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(b)), ModTime: l.mtime, Format: tar.FormatPAX, PAXRecords: pax})
	}
	if l.err == nil {
		_, l.err = l.tw.Write(b)
	}
}

func (l *layer) close() error {
	if l.err != nil {
		return l.err
	}
	return l.tw.Close()
}

type namedFile struct {
	name string
	data []byte
}

// ipxeFiles reads the iPXE binaries (*.efi, *.kpxe) of from, in name
// order, for usr/lib/ipxe, where the rack agent's --ipxe-dir looks by
// default; from "" means none.
func ipxeFiles(from string) ([]namedFile, error) {
	if from == "" {
		return nil, nil
	}
	names, err := filepath.Glob(filepath.Join(from, "*"))
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	var out []namedFile
	for _, n := range names {
		if ext := filepath.Ext(n); ext != ".efi" && ext != ".kpxe" {
			continue
		}
		b, err := os.ReadFile(n)
		if err != nil {
			return nil, err
		}
		out = append(out, namedFile{filepath.Base(n), b})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no iPXE binaries (*.efi, *.kpxe) in %s (apt-get install ipxe, or --ipxe-dir \"\")", from)
	}
	return out, nil
}

// tarDir writes the OCI layout in dir as the tar archive out, in a fixed
// order with fixed times, and returns its size.
func tarDir(dir, out string, mtime time.Time) (int64, error) {
	f, err := os.Create(out)
	if err != nil {
		return 0, err
	}
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		if d.IsDir() {
			return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: rel + "/", Mode: 0o755, ModTime: mtime})
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: rel, Mode: 0o644, Size: int64(len(b)), ModTime: mtime}); err != nil {
			return err
		}
		_, err = tw.Write(b)
		return err
	})
	err = errors.Join(err, tw.Close())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(out)
		return 0, fmt.Errorf("write %s: %w", out, err)
	}
	st, err := os.Stat(out)
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}
