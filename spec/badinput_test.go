package spec

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"testing/fstest"
	"time"
)

const rackDoc = "apiVersion: kiln.dev/v1alpha1\nkind: Rack\nmetadata: {name: r1}\n"

// billionLaughs is the classic alias bomb: nine levels of ten references.
func billionLaughs(field string) string {
	var b strings.Builder
	b.WriteString("apiVersion: kiln.dev/v1alpha1\nkind: Machine\nmetadata:\n  name: m1\n  annotations:\n")
	b.WriteString(`    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]` + "\n")
	for c := 'b'; c <= 'i'; c++ {
		p := string(c - 1)
		fmt.Fprintf(&b, "    %c: &%c [*%s,*%s,*%s,*%s,*%s,*%s,*%s,*%s,*%s,*%s]\n", c, c, p, p, p, p, p, p, p, p, p, p)
	}
	fmt.Fprintf(&b, "spec:\n  %s: *i\n", field)
	return b.String()
}

// wideAliases expands to more nodes than the decoder's budget, in fields
// that really are decoded: 400 bonds each naming the same 1000 interfaces.
func wideAliases() string {
	var b strings.Builder
	b.WriteString("apiVersion: kiln.dev/v1alpha1\nkind: Machine\nmetadata: {name: m1}\nspec:\n  interfaces: [{name: eno1, mac: \"52:54:00:00:00:01\"}]\n")
	b.WriteString("  pool: &names [" + strings.TrimSuffix(strings.Repeat("eno1,", 1000), ",") + "]\n")
	b.WriteString("  bonds:\n")
	for i := 0; i < 400; i++ {
		fmt.Fprintf(&b, "    - {name: bond%d, interfaces: *names}\n", i)
	}
	return b.String()
}

func TestBadInput(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files fstest.MapFS
		max   int64  // Loader.MaxFileSize, 0 for the default
		want  string // in Problems.String()
		warn  bool   // the problem is a warning, not an error
	}{
		{name: "too large", max: 64,
			files: fstest.MapFS{"big.yaml": {Data: []byte(rackDoc + "# " + strings.Repeat("x", 100) + "\n")}},
			want:  "big.yaml: error: file larger than 64 bytes; split it into several files"},
		{name: "too large default", max: 0,
			files: fstest.MapFS{"big.yaml": {Data: []byte(strings.Repeat("#", DefaultMaxFileSize+1))}},
			want:  "big.yaml: error: file larger than 32 MiB"},
		{name: "binary",
			files: fstest.MapFS{"bin.yaml": {Data: []byte("apiVersion: kiln.dev/v1alpha1\x00\x01\x02kind: Rack\n")}},
			want:  "bin.yaml: error: not a UTF-8 text file"},
		{name: "invalid UTF-8",
			files: fstest.MapFS{"latin1.yaml": {Data: []byte(rackDoc + "  labels: {owner: Ren\xe9}\n")}},
			want:  "latin1.yaml: error: not a UTF-8 text file"},
		{name: "empty file",
			files: fstest.MapFS{"empty.yaml": {Data: nil}},
			want:  "empty.yaml: warning: no documents in this file", warn: true},
		{name: "only comments",
			files: fstest.MapFS{"todo.yaml": {Data: []byte("# machines go here\n")}},
			want:  "todo.yaml: warning: no documents in this file", warn: true},
		{name: "only separator",
			files: fstest.MapFS{"sep.yaml": {Data: []byte("---\n")}},
			want:  "sep.yaml: warning: no documents in this file", warn: true},
		{name: "separators around a document",
			files: fstest.MapFS{"ok.yaml": {Data: []byte("---\n---\n" + rackDoc + "---\n")}, "x.yaml": {Data: []byte("- a\n")}},
			want:  "x.yaml:1:1: error: a document must be a mapping with apiVersion, kind, metadata and spec; got a list"},
		{name: "list document",
			files: fstest.MapFS{"list.yaml": {Data: []byte("- a\n- b\n")}},
			want:  "list.yaml:1:1: error: a document must be a mapping with apiVersion, kind, metadata and spec; got a list"},
		{name: "scalar document",
			files: fstest.MapFS{"s.yaml": {Data: []byte(rackDoc + "---\nhello\n")}},
			want:  `s.yaml:5:1: error: a document must be a mapping with apiVersion, kind, metadata and spec; got "hello"`},
		{name: "non-string key",
			files: fstest.MapFS{"k.yaml": {Data: []byte(rackDoc + "? [a, b]\n: c\n")}},
			want:  "k.yaml:4:3: error: keys must be plain strings"},
		{name: "merge key",
			files: fstest.MapFS{"m.yaml": {Data: []byte(rackDoc + "spec:\n  <<: {zone: a}\n")}},
			want:  "m.yaml:5:3: error: spec: merge keys (<<) are not supported; use a Profile for shared settings"},
		{name: "repeated key",
			files: fstest.MapFS{"r.yaml": {Data: []byte(rackDoc + "spec: {zone: a, zone: b}\n")}},
			want:  `r.yaml:4:17: error: spec.zone: field "zone" repeated`},
		{name: "unclosed quote",
			files: fstest.MapFS{"q.yaml": {Data: []byte("apiVersion: \"kiln.dev/v1alpha1\nkind: Rack\n")}},
			want:  "q.yaml:3: error: YAML syntax: found unexpected end of stream"},
		{name: "deep nesting",
			files: fstest.MapFS{"deep.yaml": {Data: []byte(rackDoc + "spec: " + strings.Repeat("[", 100000) + strings.Repeat("]", 100000) + "\n")}},
			want:  "deep.yaml:4: error: YAML syntax: exceeded max depth of 10000"},
		{name: "billion laughs in annotations",
			files: fstest.MapFS{"bomb.yaml": {Data: []byte(billionLaughs("interfaces"))}},
			want:  "error: metadata.annotations.a: expected a string, got a list"},
		{name: "billion laughs in a list field",
			files: fstest.MapFS{"bomb.yaml": {Data: []byte(strings.Replace(billionLaughs("interfaces"), "  annotations:\n", "  labels: {a: b}\n  x-anchors:\n", 1))}},
			want:  `bomb.yaml:6:3: error: metadata: unknown field "x-anchors"`},
		{name: "alias bomb past the node budget",
			files: fstest.MapFS{"wide.yaml": {Data: []byte(wideAliases())}},
			want:  "document too complex (more than 200000 nodes after expanding aliases)"},
		{name: "alias bomb in user-data",
			files: fstest.MapFS{"ud.yaml": {Data: []byte(rackDoc + "---\n" + cloudConfigBomb())}},
			want:  "ud.yaml:11:13: error: spec.userData: #cloud-config is not valid YAML: document contains excessive aliasing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			start := time.Now()
			l := &Loader{MaxFileSize: tc.max}
			r := l.Load(tc.files)
			elapsed := time.Since(start)
			runtime.ReadMemStats(&after)
			got := r.Problems.String()
			if !strings.Contains(got, tc.want) {
				t.Errorf("problems lack %q:\n%s", tc.want, got)
			}
			if errs := r.Problems.Errors(); tc.warn && errs != 0 || !tc.warn && errs == 0 {
				t.Errorf("%d errors, want warn=%v:\n%s", errs, tc.warn, got)
			}
			if len(r.Problems) > 1000 {
				t.Errorf("%d problems: output must stay readable", len(r.Problems))
			}
			// Generous bounds: this is about bombs, not speed.
			if elapsed > 20*time.Second {
				t.Errorf("took %v", elapsed)
			}
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<30 {
				t.Errorf("allocated %d MiB", alloc>>20)
			}
			t.Logf("%v, %d KiB allocated, %d problems, first: %.200s", elapsed, (after.TotalAlloc-before.TotalAlloc)>>10, len(r.Problems), got)
		})
	}
}

func cloudConfigBomb() string {
	var b strings.Builder
	b.WriteString("apiVersion: kiln.dev/v1alpha1\nkind: Machine\nmetadata: {name: m1}\nspec:\n")
	b.WriteString("  interfaces: [{name: eno1, mac: \"52:54:00:00:00:01\"}]\n  bmc: {driver: manual}\n")
	b.WriteString("  userData: |\n    #cloud-config\n")
	b.WriteString(`    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]` + "\n")
	for c := 'b'; c <= 'i'; c++ {
		p := string(c - 1)
		fmt.Fprintf(&b, "    %c: &%c [*%s,*%s,*%s,*%s,*%s,*%s,*%s,*%s,*%s,*%s]\n", c, c, p, p, p, p, p, p, p, p, p, p)
	}
	return b.String()
}

// TestSymlinks opens a directory the way the directory source does, through
// os.Root, so that links can't lead out of the tree.
func TestSymlinks(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	write := func(name, data string) {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, name string) {
		t.Helper()
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Skipf("symlinks unsupported: %v", err)
		}
	}
	write("rack.yaml", rackDoc)
	if err := os.WriteFile(filepath.Join(outside, "secret.yaml"), []byte(rackDoc), 0o644); err != nil {
		t.Fatal(err)
	}
	write("sub/readme.txt", "hello")
	link(".", "sub/loop")                                      // directory loop
	link("..", "sub/up")                                       // up to the root: a loop too
	link("b.yaml", "a.yaml")                                   // file loop
	link("a.yaml", "b.yaml")                                   //
	link(filepath.Join(outside, "secret.yaml"), "escape.yaml") // absolute, outside
	link("../"+filepath.Base(outside)+"/secret.yaml", "rel.yaml")
	link(outside, "outdir")
	link("nowhere.yaml", "dangling.yaml")

	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	done := make(chan *Result, 1)
	go func() { done <- Load(root.FS()) }()
	var r *Result
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Load did not finish: a symlink loop is followed")
	}
	got := r.Problems.String()
	t.Logf("\n%s", got)
	for _, want := range []string{
		"a.yaml: error: cannot open: too many levels of symbolic links",
		"b.yaml: error: cannot open: too many levels of symbolic links",
		"escape.yaml: error: cannot open: path escapes from parent",
		"rel.yaml: error: cannot open: path escapes from parent",
		"dangling.yaml: error: cannot open: no such file or directory",
		"sub/loop: warning: symbolic link to a directory is not followed",
		"sub/up: warning: symbolic link to a directory is not followed",
		"outdir: warning: symbolic link not followed: path escapes from parent",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("problems lack %q", want)
		}
	}
	if len(r.Inventory.Racks) != 1 {
		t.Errorf("racks: %v, want just r1 from rack.yaml", SortedNames(r.Inventory.Racks))
	}
	if r.Problems.Errors() != 5 {
		t.Errorf("%d errors, want 5", r.Problems.Errors())
	}
}

// TestUnreadable checks that errors from the file system become problems.
func TestUnreadable(t *testing.T) {
	r := Load(errFS{})
	if !strings.Contains(r.Problems.String(), "cannot read") {
		t.Errorf("got %q", r.Problems.String())
	}
	r = Load(os.DirFS(filepath.Join(t.TempDir(), "missing")))
	if r.Problems.Errors() == 0 {
		t.Errorf("a missing root loads without errors")
	}
	t.Log(r.Problems.String())
}

type errFS struct{}

func (errFS) Open(name string) (fs.File, error) {
	return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrPermission}
}
