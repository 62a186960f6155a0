package spec

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"reflect"
	"sort"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// DefaultMaxFileSize bounds one inventory file.
const DefaultMaxFileSize = 32 << 20

// Result is what Load found in a source tree.
type Result struct {
	Inventory *Inventory
	Problems  Problems
	// Digest identifies the content read: the SHA-256 of every file's
	// path and bytes, in path order.
	Digest string
	Files  int
}

// Loader reads inventories. It keeps the decoded documents of each file
// keyed by the file's hash, so a reload after a one-file edit decodes only
// that file. A Loader is not safe for concurrent use; the zero value works.
type Loader struct {
	MaxFileSize int64
	cache       map[string]*parsedFile
}

type parsedFile struct {
	sum      [32]byte
	objects  []Object
	problems []Problem
}

// docRef locates a document so that field paths can be turned into
// positions when a problem is reported.
type docRef struct {
	file  string
	index int
	line  int
	// undecoded lists the field paths whose values were not decoded
	// (wrong type, misspelt name): see Header.decoded.
	undecoded []string
}

type located struct {
	Object
	ref *docRef
}

// Load reads every YAML file below the root of fsys (directories whose
// names start with a dot, like .git, are skipped) and validates the lot.
func Load(fsys fs.FS) *Result { return new(Loader).Load(fsys) }

// Load is like the package-level Load, reusing decoded unchanged files.
func (l *Loader) Load(fsys fs.FS) *Result {
	if l.MaxFileSize == 0 {
		l.MaxFileSize = DefaultMaxFileSize
	}
	var (
		problems Problems
		objects  []located
		files    = map[string][]byte{}
		next     = map[string]*parsedFile{}
		digest   = sha256.New()
	)
	addFile := func(name string, data []byte) {
		files[name] = data
		sum := sha256.Sum256(data)
		fmt.Fprintf(digest, "%s\x00%x\x00", name, sum)
		if bytes.HasPrefix(data, []byte("#cloud-config")) {
			return // cloud-init user-data that a machine's userDataFile names
		}
		pf := l.cache[name]
		if pf == nil || pf.sum != sum {
			pf = l.parse(name, data)
			pf.sum = sum
		}
		next[name] = pf
		problems = append(problems, pf.problems...)
		for _, o := range pf.objects {
			objects = append(objects, located{o, o.GetHeader().refOf()})
		}
	}
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			problems = append(problems, fileProblem(p, "cannot read: %v", unwrapPath(err)))
			return nil
		}
		if p != "." && strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if d.IsDir() || !isYAML(p) {
			if d.Type()&fs.ModeSymlink != 0 {
				if fi, err := fs.Stat(fsys, p); err != nil {
					problems = append(problems, Problem{Pos: Pos{File: p}, Severity: Warning, Message: fmt.Sprintf("symbolic link not followed: %v", unwrapPath(err))})
				} else if fi.IsDir() {
					problems = append(problems, Problem{Pos: Pos{File: p}, Severity: Warning, Message: "symbolic link to a directory is not followed"})
				}
			}
			return nil
		}
		data, err := readFile(fsys, p, l.MaxFileSize)
		if err != nil {
			problems = append(problems, fileProblem(p, "%v", err))
			return nil
		}
		addFile(p, data)
		return nil
	})
	if err != nil {
		problems = append(problems, fileProblem(".", "cannot read source: %v", err))
	}
	l.cache = next

	inv, vp := build(fsys, objects)
	problems = append(problems, vp...)
	resolvePositions(problems, files)
	problems.sort()
	return &Result{
		Inventory: inv,
		Problems:  problems,
		Digest:    "sha256:" + hex.EncodeToString(digest.Sum(nil)),
		Files:     len(files),
	}
}

func (h *Header) refOf() *docRef { return h.ref }

// decoded reports whether the value at path (or above it) was read from
// the document. It is false below a value that had the wrong type or a
// field whose name was misspelt: decoding already reported that, and a
// check of the object would only add noise ("required") about it.
func (h *Header) decoded(path string) bool {
	if h.ref == nil {
		return true
	}
	for _, u := range h.ref.undecoded {
		if u == "" || path == u || strings.HasPrefix(path, u+".") || strings.HasPrefix(path, u+"[") {
			return false
		}
	}
	return true
}

func isYAML(p string) bool {
	return strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")
}

func fileProblem(file, format string, args ...any) Problem {
	return Problem{Pos: Pos{File: file}, Severity: Error, Message: fmt.Sprintf(format, args...)}
}

func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func readFile(fsys fs.FS, name string, limit int64) ([]byte, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, fmt.Errorf("cannot open: %w", unwrapPath(err))
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("cannot stat: %w", unwrapPath(err))
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("not a regular file")
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("cannot read: %w", unwrapPath(err))
	}
	if int64(len(data)) > limit {
		if limit >= 1<<20 {
			return nil, fmt.Errorf("file larger than %d MiB; split it into several files", limit>>20)
		}
		return nil, fmt.Errorf("file larger than %d bytes; split it into several files", limit)
	}
	if bytes.IndexByte(data, 0) >= 0 || !utf8.Valid(data) {
		return nil, fmt.Errorf("not a UTF-8 text file")
	}
	return data, nil
}

// parse decodes every document of one file.
func (l *Loader) parse(name string, data []byte) *parsedFile {
	pf := &parsedFile{}
	docs := 0
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for index := 0; ; index++ {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			pf.problems = append(pf.problems, yamlProblem(name, err))
			break // the parser can't resync after a syntax error
		}
		if len(doc.Content) == 0 {
			continue
		}
		root := doc.Content[0]
		if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
			continue // an empty document, e.g. a trailing ---
		}
		docs++
		d := &decoder{file: name, budget: nodeBudget}
		obj := decodeDocument(d, root)
		pf.problems = append(pf.problems, d.problems...)
		if obj != nil {
			h := obj.GetHeader()
			h.Origin = Origin{File: name, Line: root.Line}
			h.ref = &docRef{file: name, index: index, line: root.Line, undecoded: d.undecoded}
			pf.objects = append(pf.objects, obj)
		}
	}
	if docs == 0 && len(pf.problems) == 0 {
		pf.problems = append(pf.problems, Problem{Pos: Pos{File: name}, Severity: Warning, Message: "no documents in this file"})
	}
	return pf
}

func yamlProblem(name string, err error) Problem {
	// yaml.v3 says "yaml: line 7: did not find expected key".
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if n, after, ok := strings.Cut(rest, ": "); ok {
			if _, err := fmt.Sscanf(n, "%d", &line); err == nil {
				msg = after
			}
		}
	}
	return Problem{Pos: Pos{File: name, Line: line}, Severity: Error, Message: "YAML syntax: " + msg}
}

// decodeDocument checks the header and decodes the document into its kind.
func decodeDocument(d *decoder, root *yaml.Node) Object {
	if root.Kind != yaml.MappingNode {
		d.errorf(root, "", "a document must be a mapping with apiVersion, kind, metadata and spec; got %s", describe(root))
		return nil
	}
	var apiVersion, kind *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		switch root.Content[i].Value {
		case "apiVersion":
			apiVersion = root.Content[i+1]
		case "kind":
			kind = root.Content[i+1]
		}
	}
	if kind == nil {
		d.errorf(root, "kind", "missing (one of %s)", strings.Join(Kinds, ", "))
		return nil
	}
	var obj Object
	switch kind.Value {
	case KindRack:
		obj = &Rack{}
	case KindSubnet:
		obj = &Subnet{}
	case KindImage:
		obj = &Image{}
	case KindMachine:
		obj = &Machine{}
	case KindProfile:
		obj = &Profile{}
	default:
		msg := fmt.Sprintf("unknown kind %q (one of %s)", kind.Value, strings.Join(Kinds, ", "))
		if s := suggest(kind.Value, Kinds); s != "" {
			msg = fmt.Sprintf("unknown kind %q (did you mean %q?)", kind.Value, s)
		}
		d.errorf(kind, "kind", "%s", msg)
		return nil
	}
	switch {
	case apiVersion == nil:
		d.errorf(root, "apiVersion", "missing (want %s)", APIVersion)
	case apiVersion.Value != APIVersion:
		d.errorf(apiVersion, "apiVersion", "unsupported %q (want %s)", apiVersion.Value, APIVersion)
	}
	// A document with problems is kept, so that every problem of it is
	// reported (the validator stays quiet about what was not decoded) and
	// references to it resolve; its problems still reject the inventory.
	d.decode(root, reflect.ValueOf(obj).Elem(), "")
	if d.exhausted() {
		return nil // only a part of it was read
	}
	return obj
}

// resolvePositions turns document-relative field paths into file positions.
func resolvePositions(problems Problems, files map[string][]byte) {
	docs := map[string][]*yaml.Node{}
	for i := range problems {
		p := &problems[i]
		if p.doc == nil {
			continue
		}
		nodes, ok := docs[p.doc.file]
		if !ok {
			nodes = parseAll(files[p.doc.file])
			docs[p.doc.file] = nodes
		}
		p.Pos = Pos{File: p.doc.file, Line: p.doc.line}
		if p.doc.index < len(nodes) {
			if n := lookupPath(nodes[p.doc.index], p.path); n != nil {
				p.Pos.Line, p.Pos.Col = n.Line, n.Column
			}
		}
	}
}

func parseAll(data []byte) []*yaml.Node {
	var out []*yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		if err := dec.Decode(&doc); err != nil {
			return out
		}
		var root *yaml.Node
		if len(doc.Content) > 0 {
			root = doc.Content[0]
		}
		out = append(out, root)
	}
}

// lookupPath follows "spec.interfaces[1].mac" from n and returns the
// deepest node found on the way.
func lookupPath(n *yaml.Node, p string) *yaml.Node {
	if n == nil {
		return nil
	}
	best := n
	for _, seg := range splitPath(p) {
		for n.Kind == yaml.AliasNode {
			n = n.Alias
		}
		var next *yaml.Node
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == seg {
					next = n.Content[i+1]
				}
			}
		case yaml.SequenceNode:
			var i int
			if _, err := fmt.Sscanf(seg, "[%d]", &i); err == nil && i >= 0 && i < len(n.Content) {
				next = n.Content[i]
			}
		}
		if next == nil {
			return best
		}
		n, best = next, next
	}
	return best
}

func splitPath(p string) []string {
	var out []string
	for _, part := range strings.Split(p, ".") {
		if part == "" {
			continue
		}
		name, idx, found := strings.Cut(part, "[")
		if name != "" {
			out = append(out, name)
		}
		for found {
			var rest string
			var i string
			i, rest, _ = strings.Cut(idx, "]")
			out = append(out, "["+i+"]")
			_, idx, found = strings.Cut(rest, "[")
		}
	}
	return out
}

// readRelative reads a file named relative to a document's file.
func readRelative(fsys fs.FS, from, name string, limit int64) ([]byte, error) {
	if path.IsAbs(name) {
		return nil, fmt.Errorf("%q: must be relative to the document's folder", name)
	}
	p := path.Join(path.Dir(from), name)
	if !fs.ValidPath(p) {
		return nil, fmt.Errorf("%q: leaves the source tree", name)
	}
	return readFile(fsys, p, limit)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
