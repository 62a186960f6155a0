package spec

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"testing/fstest"
)

// FuzzLoad feeds arbitrary bytes to Load as one YAML file beside a small
// valid inventory it may refer to. Load must never panic, and every
// problem must name a file.
func FuzzLoad(f *testing.F) {
	for _, dir := range []string{"../examples", "testdata/invalid"} {
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() && isYAML(p) {
				data, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				f.Add(data)
			}
			return nil
		})
		if err != nil {
			f.Fatal(err)
		}
	}
	for _, s := range []string{
		"",
		"---\n",
		"- a\n",
		"a: &a [*a]\n",
		"kind: Machine\nmetadata: {name: m}\nspec: {interfaces: [{}]}\n",
		"apiVersion: kiln.dev/v1alpha1\nkind: Subnet\nmetadata: {name: s}\nspec: {cidr: 0.0.0.0/0, rack: r1, dynamicRange: {start: 0.0.0.1, end: 255.255.255.254}}\n",
		"apiVersion: kiln.dev/v1alpha1\nkind: Machine\nmetadata: {name: m}\nspec: {rootDisk: {minSize: NaN, maxSize: 1e400}}\n",
		"apiVersion: kiln.dev/v1alpha1\nkind: Profile\nmetadata: {name: p}\nspec: {selector: {matchLabels: {}}, machine: {userDataFile: ../x}}\n",
		"apiVersion: kiln.dev/v1alpha1\nkind: Machine\nmetadata: {name: m}\nspec:\n  userData: !!binary aGVsbG8=\n  vlans: [{id: 99999999999999999999, link: x}]\n",
		"apiVersion: kiln.dev/v1alpha1\nkind: Rack\nmetadata: {name: r}\nspec: {switches: [{ports: [{machine: vm, interface: eno1}]}]}\n",
		"%YAML 1.1\n--- !tag\n? complex\n: ~\n",
		// Inputs that once made yaml parsers panic.
		"a:\n.\n-\n",
		"#\n-\n-\n0",
		"{{},<<}",
		"a:\n  1:\nb\n  2:",
		"0::",
		"apiVersion: kiln.dev/v1alpha1\nkind: Machine\nmetadata: {name: m}\nspec: {userData: \"#cloud-config\\n{{},<<}\"}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fsys := fstest.MapFS{
			"base.yaml":         {Data: []byte(baseDocs)},
			"fuzz.yaml":         {Data: data},
			"user-data/ok.yaml": {Data: []byte("#cloud-config\n{}\n")},
		}
		l := &Loader{MaxFileSize: 1 << 20}
		r := l.Load(fsys)
		out := r.Problems.String()
		for _, p := range r.Problems {
			if p.Pos.File == "" {
				t.Errorf("problem without a file: %v", p)
			}
		}
		if r.Inventory == nil {
			t.Fatal("nil inventory")
		}
		// A second load through the cache gives the same answer.
		if r2 := l.Load(fsys); r2.Problems.String() != out {
			t.Errorf("cached load differs:\n%s\n---\n%s", out, r2.Problems)
		}
	})
}
