package initramfs

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// DefaultDrivers are the modules an ephemeral image carries unless told
// otherwise: NICs and disk controllers common in servers and VMs. A name
// the kernel lacks is a warning; one it has built in is skipped.
var DefaultDrivers = []string{
	// virtio (QEMU/KVM, clouds); virtio_rng feeds the kernel's entropy
	// pool, without which getrandom (DHCP transaction IDs, TLS) can block
	// for minutes in a VM whose CPU has no RDRAND
	"virtio_pci", "virtio_net", "virtio_blk", "virtio_scsi", "virtio_rng",
	// NICs
	"e1000", "e1000e", "igb", "igc", "ixgbe", "i40e", "ice",
	"bnxt_en", "bnx2x", "tg3", "mlx4_en", "mlx5_core", "qede", "sfc", "be2net", "enic",
	"r8169", "vmxnet3",
	// Disks and their controllers
	"ahci", "nvme", "sd_mod", "megaraid_sas", "mpt3sas", "smartpqi", "hpsa", "aacraid", "vmw_pvscsi",
	// Raw sockets for DHCP and LLDP (usually built in)
	"af_packet",
}

// Tree is a kernel's modules folder, lib/modules/<release>.
type Tree struct {
	Dir     string // the folder
	Release string // its base name, the kernel release

	paths   map[string]string   // module name → path relative to Dir
	builtin map[string]bool     // modules built into the kernel
	deps    map[string][]string // from modules.dep; nil when there is none
	soft    map[string][]string // from modules.softdep (with modules.dep): pre: names
	aliases map[string][]string // alias → modules; built when first needed
}

// ModName is the module name of a path or name: base name without .ko and
// a compression suffix, '-' folded to '_' as the kernel does.
func ModName(p string) string {
	b := path.Base(filepath.ToSlash(p))
	for _, s := range []string{".xz", ".zst", ".gz"} {
		b = strings.TrimSuffix(b, s)
	}
	return strings.ReplaceAll(strings.TrimSuffix(b, ".ko"), "-", "_")
}

func isModule(name string) bool {
	for _, s := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(name, s) {
			return true
		}
	}
	return false
}

// FindModules finds lib/modules/<release> under root (a kernel package
// unpacked with dpkg -x, or /): release names it, or when empty the only
// release there. It looks in lib/modules and usr/lib/modules.
func FindModules(root, release string) (string, error) {
	var bases []string
	for _, b := range []string{"lib/modules", "usr/lib/modules"} {
		d := filepath.Join(root, b)
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			bases = append(bases, d)
		}
	}
	if len(bases) == 0 {
		return "", fmt.Errorf("%s has no lib/modules folder: give the root a kernel package was unpacked into (dpkg -x)", root)
	}
	if release != "" {
		for _, b := range bases {
			if fi, err := os.Stat(filepath.Join(b, release)); err == nil && fi.IsDir() {
				return filepath.Join(b, release), nil
			}
		}
		return "", fmt.Errorf("no modules for kernel release %s under %s", release, root)
	}
	seen := map[string]string{}
	for _, b := range bases {
		ents, err := os.ReadDir(b)
		if err != nil {
			return "", err
		}
		for _, e := range ents {
			// With merged /usr, lib/modules and usr/lib/modules may be one folder.
			if e.IsDir() && seen[e.Name()] == "" {
				seen[e.Name()] = filepath.Join(b, e.Name())
			}
		}
	}
	switch len(seen) {
	case 0:
		return "", fmt.Errorf("no kernel release under %s/lib/modules", root)
	case 1:
		for _, d := range seen {
			return d, nil
		}
	}
	rels := make([]string, 0, len(seen))
	for r := range seen {
		rels = append(rels, r)
	}
	slices.Sort(rels)
	return "", fmt.Errorf("%d kernel releases under %s (%s): choose one with --release", len(rels), root, strings.Join(rels, ", "))
}

// OpenTree indexes a modules folder: the module files under it,
// modules.builtin and, when depmod has run, modules.dep. Without
// modules.dep (Debian's packages ship none) dependencies are read from
// each module's .modinfo section, as modpost wrote them.
func OpenTree(dir string) (*Tree, error) {
	t := &Tree{Dir: dir, Release: filepath.Base(dir), paths: map[string]string{}, builtin: map[string]bool{}}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !isModule(d.Name()) {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		name := ModName(rel)
		if old, ok := t.paths[name]; !ok || preferred(rel, old) {
			t.paths[name] = rel
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read modules folder: %w", err)
	}
	if len(t.paths) == 0 {
		return nil, fmt.Errorf("%s holds no kernel modules (*.ko)", dir)
	}
	if err := t.readBuiltin(); err != nil {
		return nil, err
	}
	if err := t.readDep(); err != nil {
		return nil, err
	}
	return t, nil
}

// preferred reports whether module path a wins over b for the same name:
// updates/ first, as depmod's default search order says, then the first
// by name so the choice is stable.
func preferred(a, b string) bool {
	au, bu := strings.HasPrefix(a, "updates/"), strings.HasPrefix(b, "updates/")
	if au != bu {
		return au
	}
	return a < b
}

func (t *Tree) readBuiltin() error {
	f, err := os.Open(filepath.Join(t.Dir, "modules.builtin"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			t.builtin[ModName(l)] = true
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read modules.builtin: %w", err)
	}
	return nil
}

// readDep reads modules.dep: "kernel/a.ko: kernel/b.ko kernel/c.ko".
func (t *Tree) readDep() error {
	p := filepath.Join(t.Dir, "modules.dep")
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	t.deps = map[string][]string{}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		mod, deps, ok := strings.Cut(line, ":")
		if !ok {
			return fmt.Errorf("%s:%d: want \"module: deps\", got %q", p, i+1, line)
		}
		name := ModName(mod)
		// modules.dep names the file depmod chose for this name.
		t.paths[name] = strings.TrimSpace(mod)
		var ds []string
		for _, d := range strings.Fields(deps) {
			ds = append(ds, ModName(d))
		}
		t.deps[name] = ds
	}
	t.soft = map[string][]string{}
	if b, err := os.ReadFile(filepath.Join(t.Dir, "modules.softdep")); err == nil {
		// "softdep libcrc32c pre: crc32c post: …"
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) < 3 || f[0] != "softdep" {
				continue
			}
			t.soft[ModName(f[1])] = preNames(strings.Join(f[2:], " "))
		}
	}
	return nil
}

// preNames are the "pre:" names of a softdep value ("pre: a b post: c").
func preNames(v string) []string {
	var out []string
	pre := false
	for _, w := range strings.Fields(v) {
		switch w {
		case "pre:":
			pre = true
		case "post:":
			pre = false
		default:
			if pre {
				out = append(out, w)
			}
		}
	}
	return out
}

// alias returns the modules that declare an alias (e.g. crc32c:
// crc32c_generic and crc32c_intel), from modules.alias when depmod wrote
// one, else from every module's .modinfo, read once.
func (t *Tree) alias(name string) []string {
	if t.aliases == nil {
		t.aliases = map[string][]string{}
		if b, err := os.ReadFile(filepath.Join(t.Dir, "modules.alias")); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if f := strings.Fields(line); len(f) == 3 && f[0] == "alias" {
					t.aliases[f[1]] = append(t.aliases[f[1]], ModName(f[2]))
				}
			}
		} else if t.deps == nil {
			for _, m := range slices.Sorted(maps.Keys(t.paths)) {
				info, err := t.info(m)
				if err != nil {
					continue
				}
				for _, a := range strings.Split(info["alias"], "\n") {
					if a != "" && !strings.ContainsAny(a, "*?[") {
						t.aliases[a] = append(t.aliases[a], m)
					}
				}
			}
		}
	}
	return t.aliases[name]
}

// SoftDeps returns the modules a module asks to have loaded before it
// (softdep pre:) that are in the tree: by name, else by alias (a crypto
// algorithm: every module that provides it). The kernel would request
// them through modprobe, which the ephemeral image does not have.
func (t *Tree) SoftDeps(name string) ([]string, error) {
	name = ModName(name)
	var names []string
	if t.deps != nil {
		names = t.soft[name]
	} else {
		info, err := t.info(name)
		if err != nil {
			return nil, err
		}
		for _, v := range strings.Split(info["softdep"], "\n") {
			names = append(names, preNames(v)...)
		}
	}
	var out []string
	for _, n := range names {
		switch {
		case t.builtin[ModName(n)]:
		case t.paths[ModName(n)] != "":
			out = append(out, ModName(n))
		default:
			for _, m := range t.alias(n) {
				if m != name {
					out = append(out, m)
				}
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// Builtin reports whether a module is built into the kernel.
func (t *Tree) Builtin(name string) bool { return t.builtin[ModName(name)] }

// Path is a module's path relative to the tree, or "" when it has none.
func (t *Tree) Path(name string) string { return t.paths[ModName(name)] }

// Read returns a module's contents, decompressed.
func (t *Tree) Read(name string) ([]byte, error) {
	rel := t.Path(name)
	if rel == "" {
		return nil, fmt.Errorf("module %s: not in %s", name, t.Dir)
	}
	f, err := os.Open(filepath.Join(t.Dir, filepath.FromSlash(rel)))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r, err := decompressor(rel, f)
	if err != nil {
		return nil, fmt.Errorf("module %s (%s): %w", name, rel, err)
	}
	b, err := io.ReadAll(r)
	if c, ok := r.(io.Closer); ok {
		c.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("module %s (%s): decompress: %w", name, rel, err)
	}
	return b, nil
}

// Deps returns the modules a module needs loaded first.
func (t *Tree) Deps(name string) ([]string, error) {
	name = ModName(name)
	if t.deps != nil {
		return t.deps[name], nil
	}
	info, err := t.info(name)
	if err != nil {
		return nil, err
	}
	var deps []string
	for _, d := range strings.Split(info["depends"], ",") {
		if d = strings.TrimSpace(d); d != "" {
			deps = append(deps, ModName(d))
		}
	}
	return deps, nil
}

// info reads a module's .modinfo.
func (t *Tree) info(name string) (map[string]string, error) {
	b, err := t.Read(name)
	if err != nil {
		return nil, err
	}
	info, err := modinfo(b)
	if err != nil {
		return nil, fmt.Errorf("module %s (%s): %w", name, t.Path(name), err)
	}
	return info, nil
}

// modinfo reads the key=value pairs of a module's .modinfo section.
func modinfo(ko []byte) (map[string]string, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return nil, fmt.Errorf("not an ELF object: %w", err)
	}
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, errors.New("no .modinfo section: not a kernel module")
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read .modinfo: %w", err)
	}
	info := map[string]string{}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if k, v, ok := strings.Cut(string(kv), "="); ok {
			if old, dup := info[k]; dup {
				v = old + "\n" + v // alias, firmware: several values
			}
			info[k] = v
		}
	}
	return info, nil
}

// Selection is what an image carries for a list of drivers.
type Selection struct {
	// Modules in load order: every module after the ones it needs.
	Modules []string
	// Builtin lists the requested drivers the kernel has built in.
	Builtin []string
	// Missing lists the requested drivers the kernel has neither as a
	// module nor built in.
	Missing []string
}

// Resolve selects the modules for drivers and everything they depend on,
// in a load order that puts each module after its dependencies: a
// depth-first walk in the order drivers are given, soft dependencies
// (softdep pre:) then hard ones, each in name order, so the same tree and
// list always give the same order.
func (t *Tree) Resolve(drivers []string) (*Selection, error) {
	sel := &Selection{}
	done := map[string]bool{}
	var visit func(name string, stack []string) error
	visit = func(name string, stack []string) error {
		if done[name] || t.builtin[name] {
			return nil
		}
		if slices.Contains(stack, name) {
			return fmt.Errorf("dependency cycle: %s → %s", strings.Join(stack, " → "), name)
		}
		if t.paths[name] == "" {
			return fmt.Errorf("%s needs module %s, which is neither in %s nor built in", stack[len(stack)-1], name, t.Dir)
		}
		deps, err := t.Deps(name)
		if err != nil {
			return err
		}
		// Soft dependencies first, and only if they resolve: they are
		// wanted, not needed.
		soft, err := t.SoftDeps(name)
		if err != nil {
			return err
		}
		for _, d := range soft {
			if !slices.Contains(stack, d) {
				if err := visit(d, append(stack, name)); err != nil {
					continue
				}
			}
		}
		deps = slices.Clone(deps)
		slices.Sort(deps)
		for _, d := range slices.Compact(deps) {
			if err := visit(d, append(stack, name)); err != nil {
				return err
			}
		}
		done[name] = true
		sel.Modules = append(sel.Modules, name)
		return nil
	}
	seen := map[string]bool{}
	for _, d := range drivers {
		name := ModName(d)
		if name == "" || seen[name] {
			continue
		}
		seen[name] = true
		switch {
		case t.builtin[name]:
			sel.Builtin = append(sel.Builtin, name)
		case t.paths[name] == "":
			sel.Missing = append(sel.Missing, name)
		default:
			if err := visit(name, nil); err != nil {
				return nil, err
			}
		}
	}
	return sel, nil
}
