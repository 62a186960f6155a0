package initramfs

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/kilnhq/kiln/inventory/pki"
	"github.com/kilnhq/kiln/spec"
)

// Files of the output folder.
const (
	KernelFile = "vmlinuz"
	InitrdFile = "initramfs.cpio.gz"
	SumsFile   = "SHA256SUMS"
	ImageFile  = "image.yaml"
)

// ModulesList is where the initramfs lists the modules to load, one path
// relative to /lib/modules/<release> a line, in load order.
const ModulesList = "etc/kiln/modules"

// CAFile is where the initramfs carries the rack's CA (Options.CA): the
// agent reads it as /etc/kiln/ca.pem (machine.CAPath).
const CAFile = "etc/kiln/ca.pem"

// DefaultCmdline is the kernel command line an image gets unless told:
// the console on the screen and on the first serial port.
const DefaultCmdline = "console=tty0 console=ttyS0,115200n8"

// Options say what to build.
type Options struct {
	Agent   string // the static machine agent binary, /init
	Kernel  string // the kernel (vmlinuz)
	Modules string // the kernel's modules folder, lib/modules/<release>
	// Drivers are wanted when the kernel has them: a missing one is a
	// warning (Result.Missing). Required must all be there.
	Drivers  []string
	Required []string
	Out      string // the output folder, created if needed
	Name     string // the Image's name
	Arch     string // amd64 or arm64; default amd64
	Cmdline  string // the Image's kernel command line
	// URLBase is where the folder's files will be fetched from; default
	// file://<absolute Out>.
	URLBase string
	// CA, when set, is a PEM file of the CA that signed the rack's
	// certificate, put at CAFile: the agent then talks to the rack over
	// https verified against it only.
	CA string
	// Epoch is the mtime of every archive entry, seconds since 1970 (e.g.
	// SOURCE_DATE_EPOCH); default 0.
	Epoch int64
}

// Result says what was built.
type Result struct {
	Release  string
	Modules  []string // load order
	Builtin  []string // requested drivers built into the kernel
	Missing  []string // wanted drivers the kernel has not
	Files    []OutFile
	Image    *spec.Image
	ModBytes int64 // uncompressed size of the modules
}

// OutFile is one file written to the output folder.
type OutFile struct {
	Name   string
	Size   int64
	SHA256 string
}

var machines = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

// checkAgent refuses an agent binary that cannot run as /init: not an ELF
// executable for the arch, or dynamically linked (an initramfs has no
// libc or loader, and the kernel then panics with a bare "No working init
// found").
func checkAgent(path, arch string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("agent %s: not an executable: %w", path, err)
	}
	defer f.Close()
	if f.Machine != machines[arch] {
		return fmt.Errorf("agent %s is built for %s, the image is %s: build it with GOARCH=%s", path, f.Machine, arch, arch)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("agent %s is dynamically linked: build it static, CGO_ENABLED=0 go build ./cmd/kiln-agent", path)
		}
	}
	return nil
}

// Build writes the ephemeral image to o.Out: the kernel, the initramfs,
// SHA256SUMS and image.yaml. The same inputs give byte-identical files.
func Build(o Options) (*Result, error) {
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	in, err := readInputs(o)
	if err != nil {
		return nil, err
	}
	tree, sel, err := selectModules(o)
	if err != nil {
		return nil, err
	}
	res := &Result{Release: tree.Release, Modules: sel.Modules, Builtin: sel.Builtin, Missing: sel.Missing}
	initrd, err := buildInitrd(o, in, tree, sel, res)
	if err != nil {
		return nil, err
	}
	if err := writeOutputs(o, in.kernel, initrd, tree.Release, res); err != nil {
		return nil, err
	}
	return res, nil
}

// setDefaults checks the options and fills in the arch and command line.
func (o *Options) setDefaults() error {
	if o.Arch == "" {
		o.Arch = "amd64"
	}
	if _, ok := machines[o.Arch]; !ok {
		return fmt.Errorf("arch %q: use amd64 or arm64", o.Arch)
	}
	if o.Name == "" {
		return errors.New("the image needs a name")
	}
	if o.Cmdline == "" {
		o.Cmdline = DefaultCmdline
	}
	return nil
}

// inputs are the files an image is built from.
type inputs struct {
	agent, ca, kernel []byte // ca: nil without Options.CA
}

// readInputs reads the agent (checked to run as /init), the CA (checked
// to be one) and the kernel.
func readInputs(o Options) (inputs, error) {
	var in inputs
	if err := checkAgent(o.Agent, o.Arch); err != nil {
		return in, err
	}
	var err error
	if in.agent, err = os.ReadFile(o.Agent); err != nil {
		return in, err
	}
	if o.CA != "" {
		if in.ca, err = readCA(o.CA); err != nil {
			return in, err
		}
	}
	if in.kernel, err = os.ReadFile(o.Kernel); err != nil {
		return in, fmt.Errorf("kernel: %w", err)
	}
	return in, nil
}

// readCA reads a PEM file of CA certificates, refusing any that is not a
// CA (the rack's own certificate given by mistake).
func readCA(path string) ([]byte, error) {
	ca, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("CA: %w", err)
	}
	certs, err := pki.ParseCerts(ca, path)
	if err != nil {
		return nil, fmt.Errorf("CA: %w", err)
	}
	for _, c := range certs {
		if !c.IsCA {
			return nil, fmt.Errorf("CA %s: %q is not a CA certificate (give the CA's ca.pem, not the rack's certificate)", path, c.Subject.CommonName)
		}
	}
	return ca, nil
}

// selectModules resolves the required and wanted drivers in the kernel's
// modules folder; a required driver the kernel lacks is an error.
func selectModules(o Options) (*Tree, *Selection, error) {
	tree, err := OpenTree(o.Modules)
	if err != nil {
		return nil, nil, err
	}
	sel, err := tree.Resolve(append(append([]string(nil), o.Required...), o.Drivers...))
	if err != nil {
		return nil, nil, err
	}
	var missingRequired []string
	for _, m := range sel.Missing {
		for _, r := range o.Required {
			if ModName(r) == m {
				missingRequired = append(missingRequired, m)
			}
		}
	}
	if len(missingRequired) > 0 {
		return nil, nil, fmt.Errorf("kernel %s has no driver %s, neither as a module nor built in (see %s)",
			tree.Release, strings.Join(missingRequired, ", "), tree.Dir)
	}
	return tree, sel, nil
}

// buildInitrd lays out the initramfs (the agent as /init, the selected
// modules decompressed and listed in load order, the CA) and returns it as
// a gzipped newc cpio. It adds the modules' size to res.ModBytes.
func buildInitrd(o Options, in inputs, tree *Tree, sel *Selection, res *Result) ([]byte, error) {
	a := NewArchive()
	a.Dir("tmp", 0o1777)
	for _, d := range []string{"dev", "proc", "sys", "run", "etc/kiln"} {
		a.Dir(d, 0o755)
	}
	a.CharDev("dev/console", 0o600, 5, 1) // a console before devtmpfs is mounted
	a.File("init", 0o755, in.agent)
	modDir := "lib/modules/" + tree.Release
	a.Dir(modDir, 0o755)
	var list strings.Builder
	for _, m := range sel.Modules {
		b, err := tree.Read(m)
		if err != nil {
			return nil, err
		}
		rel := plainPath(tree.Path(m))
		a.File(modDir+"/"+rel, 0o644, b)
		res.ModBytes += int64(len(b))
		list.WriteString(rel + "\n")
	}
	a.File(ModulesList, 0o644, []byte(list.String()))
	if in.ca != nil {
		a.File(CAFile, 0o644, in.ca)
	}

	var cpio bytes.Buffer
	if _, err := a.WriteTo(&cpio, o.Epoch); err != nil {
		return nil, err
	}
	var initrd bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&initrd, gzip.BestCompression) // header: no name, mtime 0
	zw.Write(cpio.Bytes())
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return initrd.Bytes(), nil
}

// writeOutputs writes the kernel, the initramfs, SHA256SUMS and the Image
// document to o.Out, each atomically, and records them in res.
func writeOutputs(o Options, kernel, initrd []byte, release string, res *Result) error {
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return err
	}
	base, err := urlBase(o)
	if err != nil {
		return err
	}
	out := map[string][]byte{KernelFile: kernel, InitrdFile: initrd}
	sha := map[string]string{}
	var sums strings.Builder
	for _, n := range []string{InitrdFile, KernelFile} { // sorted, as sha256sum lists them
		s := sha256.Sum256(out[n])
		sha[n] = hex.EncodeToString(s[:])
		res.Files = append(res.Files, OutFile{Name: n, Size: int64(len(out[n])), SHA256: sha[n]})
		fmt.Fprintf(&sums, "%s  %s\n", sha[n], n)
	}
	out[SumsFile] = []byte(sums.String())
	res.Image = imageDoc(o, base, release, len(res.Modules), sha)
	if out[ImageFile], err = encodeImage(res.Image); err != nil {
		return err
	}
	for _, n := range []string{KernelFile, InitrdFile, SumsFile, ImageFile} {
		if err := writeAtomic(filepath.Join(o.Out, n), out[n]); err != nil {
			return err
		}
	}
	return nil
}

// urlBase is where the output folder's files will be fetched from,
// without a trailing slash: o.URLBase, or file://<absolute o.Out>.
func urlBase(o Options) (string, error) {
	base := o.URLBase
	if base == "" {
		abs, err := filepath.Abs(o.Out)
		if err != nil {
			return "", err
		}
		base = (&url.URL{Scheme: "file", Path: abs}).String()
	}
	return strings.TrimSuffix(base, "/"), nil
}

// imageDoc is the Image document of the built files (sha: their SHA-256
// by file name).
func imageDoc(o Options, base, release string, modules int, sha map[string]string) *spec.Image {
	return &spec.Image{
		Header: spec.Header{APIVersion: spec.APIVersion, Kind: spec.KindImage, Metadata: spec.Metadata{
			Name: o.Name,
			Annotations: map[string]string{
				"kiln.dev/kernel-release": release,
				"kiln.dev/modules":        fmt.Sprint(modules),
			},
		}},
		Spec: spec.ImageSpec{
			Purpose: spec.PurposeEphemeral,
			Arch:    o.Arch,
			Kernel:  &spec.Artifact{URL: base + "/" + KernelFile, SHA256: sha[KernelFile]},
			Initrd:  &spec.Artifact{URL: base + "/" + InitrdFile, SHA256: sha[InitrdFile]},
			Cmdline: o.Cmdline,
		},
	}
}

// encodeImage renders image.yaml.
func encodeImage(img *spec.Image) ([]byte, error) {
	var doc bytes.Buffer
	doc.WriteString("# Built by kiln image build-ephemeral; SHA256SUMS lists the same hashes.\n")
	enc := yaml.NewEncoder(&doc)
	enc.SetIndent(2)
	if err := enc.Encode(img); err != nil {
		return nil, err
	}
	enc.Close()
	return doc.Bytes(), nil
}

// plainPath is a module's path without its compression suffix: the image
// carries it decompressed.
func plainPath(rel string) string {
	for _, s := range []string{".xz", ".zst", ".gz"} {
		if strings.HasSuffix(rel, ".ko"+s) {
			return strings.TrimSuffix(rel, s)
		}
	}
	return rel
}

// writeAtomic writes a file through a temporary one and a rename, so a
// reader (a rack fetching file:// URLs) never sees half a file.
func writeAtomic(name string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), name)
}

// UnpackDeb unpacks a kernel package (linux-image-*.deb) into dir with
// dpkg -x and returns its kernel and modules folder for release (empty:
// the only one in the package).
func UnpackDeb(ctx context.Context, deb, dir, release string) (kernel, modules string, err error) {
	if out, err := exec.CommandContext(ctx, "dpkg", "-x", deb, dir).CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("dpkg -x %s: %v: %s", deb, err, bytes.TrimSpace(out))
	}
	modules, err = FindModules(dir, release)
	if err != nil {
		return "", "", fmt.Errorf("%s: %w", deb, err)
	}
	rel := filepath.Base(modules)
	for _, k := range []string{"boot/vmlinuz-" + rel, "boot/vmlinux-" + rel, "boot/Image-" + rel} {
		if fi, err := os.Stat(filepath.Join(dir, k)); err == nil && fi.Mode().IsRegular() {
			return filepath.Join(dir, k), modules, nil
		}
	}
	return "", "", fmt.Errorf("%s has modules for %s but no boot/vmlinuz-%s", deb, rel, rel)
}
