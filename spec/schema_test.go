package spec

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnhq/kiln/spec/kilntest"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"gopkg.in/yaml.v3"
)

var update = flag.Bool("update", false, "rewrite golden files")

const schemaFile = "../docs/kiln.schema.json"

func TestSchemaUpToDate(t *testing.T) {
	got, err := Schema()
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(got) {
		t.Fatalf("Schema() is not valid JSON")
	}
	kilntest.Golden(t, schemaFile, got, *update, "go test ./spec -run TestSchemaUpToDate -update")
}

// TestSchemaShape spot-checks what the schema says, through its JSON.
func TestSchemaShape(t *testing.T) {
	b, err := Schema()
	if err != nil {
		t.Fatal(err)
	}
	var s map[string]any
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	get := func(path ...string) any {
		var v any = s
		for _, p := range path {
			m, ok := v.(map[string]any)
			if !ok {
				t.Fatalf("%s: not an object at %q", strings.Join(path, "/"), p)
			}
			v = m[p]
		}
		return v
	}
	check := func(want any, path ...string) {
		t.Helper()
		got := get(path...)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s = %v, want %v", strings.Join(path, "/"), got, want)
		}
	}
	check("https://json-schema.org/draft/2020-12/schema", "$schema")
	check(APIVersion, "properties", "apiVersion", "const")
	check(Kinds, "properties", "kind", "enum")
	check([]string{"apiVersion", "kind", "metadata", "spec"}, "required")
	check(false, "additionalProperties")
	check([]string{"name"}, "$defs", "Metadata", "required")
	check("#/$defs/MachineSpec", "$defs", "ProfileSpec", "properties", "machine", "$ref")
	check([]string{"ipmi", "redfish", "webhook", "manual"}, "$defs", "BMC", "properties", "driver", "enum")
	check(nil, "$defs", "BMC", "required") // a profile may supply the driver
	check(1500, "$defs", "SubnetSpec", "properties", "mtu", "default")
	check("1h", "$defs", "SubnetSpec", "properties", "leaseTime", "default")
	check("#/$defs/Duration", "$defs", "SubnetSpec", "properties", "leaseTime", "$ref")
	check("DHCP lease time, e.g. 1h.", "$defs", "SubnetSpec", "properties", "leaseTime", "description")
	check("string", "$defs", "Metadata", "properties", "labels", "additionalProperties", "type")
	check("#/$defs/Interface", "$defs", "MachineSpec", "properties", "interfaces", "items", "$ref")
	if len(get("allOf").([]any)) != len(Kinds) {
		t.Errorf("allOf has %d entries, want one per kind", len(get("allOf").([]any)))
	}
	// Every object forbids unknown fields.
	for name, d := range get("$defs").(map[string]any) {
		def := d.(map[string]any)
		if def["type"] == "object" && def["additionalProperties"] != false {
			t.Errorf("$defs/%s allows unknown fields", name)
		}
	}
	if !bytes.Contains(b, []byte("<link>.<id>")) {
		t.Errorf("descriptions are HTML-escaped")
	}
}

func compileSchema(t testing.TB) *jsonschema.Schema {
	t.Helper()
	b, err := Schema()
	if err != nil {
		t.Fatal(err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource(SchemaID, doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile(SchemaID)
	if err != nil {
		t.Fatal(err)
	}
	return sch
}

// yamlDocs turns each document of a YAML stream into the value a JSON
// parser would produce, as editors do before applying a schema.
func yamlDocs(t testing.TB, data []byte) []any {
	t.Helper()
	var out []any
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var v any
		err := dec.Decode(&v)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if v != nil {
			out = append(out, jsonValue(v))
		}
	}
}

// jsonValue converts yaml.v3 values to JSON ones (string map keys).
func jsonValue(v any) any {
	switch x := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = jsonValue(e)
		}
		return m
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[fmt.Sprint(k)] = jsonValue(e)
		}
		return m
	case []any:
		l := make([]any, len(x))
		for i, e := range x {
			l[i] = jsonValue(e)
		}
		return l
	case nil, string, bool, int, int64, uint64, float64:
		return x
	}
	return fmt.Sprint(v) // timestamps and the like are strings to JSON
}

func exampleFiles(t *testing.T) []string {
	var files []string
	err := filepath.WalkDir("../examples", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && notInventory[d.Name()] {
			return filepath.SkipDir // systemd units and manifests, not inventory
		}
		if !d.IsDir() && isYAML(p) {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no example files found")
	}
	return files
}

func TestExamplesMatchSchema(t *testing.T) {
	sch := compileSchema(t)
	docs := 0
	for _, f := range exampleFiles(t) {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.HasPrefix(data, []byte("#cloud-config")) {
			continue // user-data, not a Kiln document
		}
		rel, _ := filepath.Rel(filepath.Dir(f), filepath.Dir(schemaFile))
		header := "# yaml-language-server: $schema=" + filepath.ToSlash(filepath.Join(rel, filepath.Base(schemaFile)))
		if first, _, _ := strings.Cut(string(data), "\n"); first != header {
			t.Errorf("%s: first line is %q, want %q", f, first, header)
		}
		for i, doc := range yamlDocs(t, data) {
			docs++
			if err := sch.Validate(doc); err != nil {
				t.Errorf("%s: document %d: %v", f, i+1, err)
			}
		}
	}
	t.Logf("%d documents match the schema", docs)
}

func TestSchemaRejects(t *testing.T) {
	sch := compileSchema(t)
	const machine = `apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: m1}
spec:
  interfaces: [{name: eno1, mac: "52:54:00:00:00:01", subnet: net}]
`
	if err := sch.Validate(yamlDocs(t, []byte(machine))[0]); err != nil {
		t.Fatalf("the base document should pass: %v", err)
	}
	for name, doc := range map[string]string{
		"unknown top-level field": machine + "extra: 1\n",
		"unknown spec field":      machine + "  interfacs: []\n",
		"unknown nested field":    machine + "  bmc: {driver: ipmi, adress: x}\n",
		"field of another kind":   machine + "  cidr: 10.0.0.0/24\n",
		"wrong apiVersion":        strings.Replace(machine, "v1alpha1", "v1", 1),
		"unknown kind":            strings.Replace(machine, "kind: Machine", "kind: Machin", 1),
		"missing metadata":        strings.Replace(machine, "metadata: {name: m1}\n", "", 1),
		"missing name":            strings.Replace(machine, "{name: m1}", "{labels: {a: b}}", 1),
		"bad name":                strings.Replace(machine, "{name: m1}", "{name: M_1}", 1),
		"bad enum":                machine + "  state: gone\n",
		"string for int":          machine + "  deployGeneration: two\n",
		"list for mapping":        machine + "  bmc: [ipmi]\n",
		"both secret sources":     machine + "  bmc: {driver: ipmi, password: {fromFile: /a, fromEnv: B}}\n",
		"empty secret":            machine + "  bmc: {driver: ipmi, password: {}}\n",
		"bad duration":            "apiVersion: kiln.dev/v1alpha1\nkind: Subnet\nmetadata: {name: n}\nspec: {cidr: 10.0.0.0/24, rack: r, leaseTime: 1 hour}\n",
		"bad size":                machine + "  rootDisk: {minSize: 100 gigs}\n",
		"negative size":           machine + "  rootDisk: {minSize: -5}\n",
		"image without sha256":    "apiVersion: kiln.dev/v1alpha1\nkind: Image\nmetadata: {name: i}\nspec: {purpose: os, disk: {url: http://x/y.raw}}\n",
	} {
		t.Run(name, func(t *testing.T) {
			err := sch.Validate(yamlDocs(t, []byte(doc))[0])
			if err == nil {
				t.Fatalf("schema accepted:\n%s", doc)
			}
			t.Log(err)
		})
	}
	for name, doc := range map[string]string{
		"plaintext secret": machine + "  bmc: {driver: ipmi, password: hunter2}\n",
		"size with unit":   machine + "  rootDisk: {minSize: 1.5TiB, maxSize: 4T}\n",
		"size in bytes":    machine + "  rootDisk: {minSize: 500000000000}\n",
		"bmc from profile": machine + "  bmc: {address: 10.0.0.1}\n",
		"duration":         "apiVersion: kiln.dev/v1alpha1\nkind: Subnet\nmetadata: {name: n}\nspec: {cidr: 10.0.0.0/24, rack: r, leaseTime: 1h30m}\n",
	} {
		t.Run(name, func(t *testing.T) {
			if err := sch.Validate(yamlDocs(t, []byte(doc))[0]); err != nil {
				t.Fatalf("schema rejected:\n%s\n%v", doc, err)
			}
		})
	}
}
