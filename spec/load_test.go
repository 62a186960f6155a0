package spec

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
)

// TestExamplesValid loads every inventory folder under ../examples
// (examples/deploy holds deployment files, not inventory).
// notInventory are the folders of examples/ that hold no inventory:
// deployment files, Prometheus rules, Grafana dashboards.
var notInventory = map[string]bool{"deploy": true, "prometheus": true, "grafana": true}

func TestExamplesValid(t *testing.T) {
	dirs, err := os.ReadDir("../examples")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, d := range dirs {
		if !d.IsDir() || notInventory[d.Name()] {
			continue
		}
		n++
		t.Run(d.Name(), func(t *testing.T) {
			r := Load(os.DirFS(filepath.Join("../examples", d.Name())))
			for _, p := range r.Problems {
				if p.Severity == Error {
					t.Error(p)
				} else {
					t.Log(p)
				}
			}
			if r.Inventory.Len() == 0 {
				t.Errorf("no objects loaded")
			}
			t.Logf("%d files, %d racks, %d subnets, %d images, %d profiles, %d machines",
				r.Files, len(r.Inventory.Racks), len(r.Inventory.Subnets), len(r.Inventory.Images),
				len(r.Inventory.Profiles), len(r.Inventory.Machines))
		})
	}
	if n == 0 {
		t.Fatal("no examples found")
	}
}

// TestInvalid loads each folder under testdata/invalid and compares the
// problems with testdata/invalid/<case>.golden (rewritten with -update).
func TestInvalid(t *testing.T) {
	const dir = "testdata/invalid"
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]bool{}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		name := e.Name()
		cases[name] = true
		t.Run(name, func(t *testing.T) {
			r := Load(os.DirFS(filepath.Join(dir, name)))
			got := r.Problems.String()
			golden := filepath.Join(dir, name+".golden")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./spec -run TestInvalid -update)", err)
			}
			if got != string(want) {
				t.Errorf("problems differ from %s (run with -update to accept):\n--- got\n%s--- want\n%s", golden, got, want)
			}
			if len(r.Problems) == 0 {
				t.Errorf("an invalid case with no problems")
			}
			for i, p := range r.Problems {
				if p.Pos.File == "" || (p.Pos.Line == 0 && !strings.HasPrefix(p.Message, "cannot")) {
					t.Errorf("problem without a position: %v", p)
				}
				if i > 0 && less(p.Pos, r.Problems[i-1].Pos) {
					t.Errorf("problems not sorted: %v after %v", p, r.Problems[i-1])
				}
			}
		})
	}
	// A golden file whose case folder is gone is stale.
	for _, e := range entries {
		if name, ok := strings.CutSuffix(e.Name(), ".golden"); ok && !cases[name] {
			t.Errorf("%s: no folder %s", e.Name(), name)
		}
	}
}

func less(a, b Pos) bool {
	if a.File != b.File {
		return a.File < b.File
	}
	if a.Line != b.Line {
		return a.Line < b.Line
	}
	return a.Col < b.Col
}

func TestUserDataLimit(t *testing.T) {
	doc := "apiVersion: kiln.dev/v1alpha1\nkind: Rack\nmetadata: {name: r}\n---\n" +
		"apiVersion: kiln.dev/v1alpha1\nkind: Subnet\nmetadata: {name: s}\nspec: {cidr: 10.0.0.0/24, rack: r}\n---\n" +
		"apiVersion: kiln.dev/v1alpha1\nkind: Machine\nmetadata: {name: m}\nspec:\n  bmc: {driver: manual}\n" +
		"  interfaces: [{name: eno1, mac: \"02:00:00:00:00:01\", subnet: s}]\n  userData: |\n    #cloud-config\n    # " +
		strings.Repeat("x", MaxUserData) + "\n"
	r := Load(fstest.MapFS{"m.yaml": &fstest.MapFile{Data: []byte(doc)}})
	if r.Problems.Errors() != 1 || !strings.Contains(r.Problems.String(), "user-data is limited to 512 KiB") {
		t.Fatalf("got:\n%s", r.Problems)
	}
}

func TestAllowedRelays(t *testing.T) {
	load := func(relays string) *Result {
		doc := "apiVersion: kiln.dev/v1alpha1\nkind: Rack\nmetadata: {name: r}\n---\n" +
			"apiVersion: kiln.dev/v1alpha1\nkind: Subnet\nmetadata: {name: s}\nspec: {cidr: 10.0.0.0/24, rack: r, mode: relay, gateway: 10.0.0.1, allowedRelays: " + relays + "}\n"
		return Load(fstest.MapFS{"s.yaml": &fstest.MapFile{Data: []byte(doc)}})
	}
	r := load("[10.9.0.1, 10.9.0.2]")
	if r.Problems.Errors() != 0 {
		t.Fatalf("valid relays refused:\n%s", r.Problems)
	}
	if got := r.Inventory.Subnets["s"].Spec.AllowedRelays; len(got) != 2 || got[1] != "10.9.0.2" {
		t.Errorf("allowedRelays = %v", got)
	}
	for relays, want := range map[string]string{
		"[relay.example]":      `spec.allowedRelays[0]: "relay.example" is not an IPv4 address`,
		"[\"fe80::1\"]":        `spec.allowedRelays[0]: "fe80::1" is not an IPv4 address`,
		"[0.0.0.0]":            "spec.allowedRelays[0]: 0.0.0.0 cannot be a relay's address",
		"[10.9.0.1, 10.9.0.1]": "spec.allowedRelays[1]: 10.9.0.1 is listed twice",
	} {
		if r := load(relays); r.Problems.Errors() != 1 || !strings.Contains(r.Problems.String(), want) {
			t.Errorf("%s: got\n%s\nwant %q", relays, r.Problems, want)
		}
	}
}

// TestDocumentWithProblemsKept: a document with an unknown field and an
// invalid value (issue 13) is reported in full and kept for the
// reference checks, and the inventory still has errors (it is rejected
// whole by whoever applies it).
func TestDocumentWithProblemsKept(t *testing.T) {
	r := Load(os.DirFS("testdata/invalid/unknown-field-beside-invalid-value"))
	var msgs []string
	for _, p := range r.Problems {
		msgs = append(msgs, p.String())
	}
	got := strings.Join(msgs, "\n")
	for _, want := range []string{`unknown field "bogus"`, `spec.firmware: "nonsense" is not one of bios, uefi`} {
		if !strings.Contains(got, want) {
			t.Errorf("no problem with %q in:\n%s", want, got)
		}
	}
	if strings.Contains(got, "not found") {
		t.Errorf("a false \"not found\":\n%s", got)
	}
	if r.Inventory.Machines["vm-1"] == nil {
		t.Error("vm-1 was dropped")
	}
	if r.Problems.Errors() != 2 {
		t.Errorf("%d errors, want 2", r.Problems.Errors())
	}
}

// TestUndecodedQuiet: the checks say nothing about a value the decoder
// could not take (a wrong type, a misspelt field), only about the rest.
func TestUndecodedQuiet(t *testing.T) {
	doc := `apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: m}
spec:
  interfaces: eno1
  bmc: {driver: ipmi, adress: 10.0.0.5, username: admin, password: {fromEnv: PW}}
  rootDisk: {minSize: 2000G, maxSize: 1000G}
`
	r := Load(fstest.MapFS{"m.yaml": {Data: []byte(doc)}})
	got := r.Problems.String()
	want := `m.yaml:5:15: error: spec.interfaces: expected a list, got "eno1"
m.yaml:6:23: error: spec.bmc: unknown field "adress" (did you mean "address"?)
m.yaml:7:13: error: spec.rootDisk: minSize is larger than maxSize: no disk can match
`
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}
