package spec

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"unicode"

	"github.com/kilnhq/kiln/spec/kilntest"
)

const referenceFile = "../docs/reference.md"

// TestReference keeps docs/reference.md, the reference of every kind and
// field, equal to what the spec types say: it is generated through the
// same schema generator as docs/kiln.schema.json (names, types, required,
// defaults, allowed values and patterns from the struct tags) plus the Go
// doc comments of the types. A field added, removed or changed without
// regenerating fails here.
func TestReference(t *testing.T) {
	got, err := reference()
	if err != nil {
		t.Fatal(err)
	}
	kilntest.Golden(t, referenceFile, got, *update, "go test ./spec -run TestReference -update")
}

// TestReferenceCoversEveryField checks the generator itself: every YAML
// field of every type reachable from a kind appears in the reference as a
// table row, so a field the generator skipped cannot pass unnoticed.
func TestReferenceCoversEveryField(t *testing.T) {
	ref, err := reference()
	if err != nil {
		t.Fatal(err)
	}
	sections := map[string]string{} // "### Name" or "## Kind" -> its text
	var name string
	for _, line := range strings.Split(string(ref), "\n") {
		if strings.HasPrefix(line, "## ") || strings.HasPrefix(line, "### ") {
			name = strings.TrimLeft(line, "# ")
			continue
		}
		sections[name] += line + "\n"
	}
	seen := map[reflect.Type]bool{}
	var check func(section string, t reflect.Type)
	check = func(section string, typ reflect.Type) {
		for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice || typ.Kind() == reflect.Map {
			typ = typ.Elem()
		}
		if typ.Kind() != reflect.Struct || typ == durationType || seen[typ] {
			return
		}
		seen[typ] = true
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			yname, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if yname == "-" || !f.IsExported() {
				continue
			}
			if strings.Contains(opts, "inline") {
				check(section, f.Type)
				continue
			}
			if yname == "" {
				yname = strings.ToLower(f.Name)
			}
			if !strings.Contains(sections[section], "| `"+yname+"` |") {
				t.Errorf("reference section %q has no row for %s.%s (yaml %q)", section, typ.Name(), f.Name, yname)
			}
			ft := f.Type
			for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice || ft.Kind() == reflect.Map {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && ft != durationType {
				check(sectionOf(ft), ft)
			}
		}
	}
	for _, kind := range Kinds {
		st, _ := reflect.TypeOf(newObject(kind)).Elem().FieldByName("Spec")
		check(kind, st.Type)
	}
	check("Every document", reflect.TypeOf(Header{}))
	if len(seen) < 10 {
		t.Fatalf("checked only %d types: the walk is broken", len(seen))
	}
}

// sectionOf is the reference section describing a struct type: a kind's
// spec type is described under the kind's heading.
func sectionOf(t reflect.Type) string {
	for _, kind := range Kinds {
		if st, _ := reflect.TypeOf(newObject(kind)).Elem().FieldByName("Spec"); st.Type == t {
			return kind
		}
	}
	return t.Name()
}

// reference renders docs/reference.md.
func reference() ([]byte, error) {
	r := &refGen{g: &schemaGen{defs: map[string]*jsonSchema{}}, anchors: map[string]string{}}
	var err error
	if r.typeDocs, err = typeDocs("."); err != nil {
		return nil, err
	}
	// The document header, as Schema builds it: a Rack's top-level fields.
	header, err := r.g.objectSchema(reflect.TypeOf(Rack{}))
	if err != nil {
		return nil, err
	}
	specDef := map[string]string{} // kind -> its spec's definition
	for _, kind := range Kinds {
		st, ok := reflect.TypeOf(newObject(kind)).Elem().FieldByName("Spec")
		if !ok {
			return nil, fmt.Errorf("kind %s has no Spec field", kind)
		}
		s, err := r.g.typeSchema(st.Type)
		if err != nil {
			return nil, err
		}
		specDef[kind] = defName(s.Ref)
		r.anchors[specDef[kind]] = slug(kind)
	}
	// Value types (written as a scalar, or one of several shapes) get a
	// section of their own; every other struct type is described under the
	// first kind that uses it.
	var values []string
	for _, name := range sortedKeys(r.g.defs) {
		if d := r.g.defs[name]; d.Type != "object" || d.OneOf != nil {
			values = append(values, name)
			r.anchors[name] = slug(name)
		}
	}
	r.anchors["Metadata"] = slug("Metadata")
	placed := map[string][]string{} // kind -> types described under it, in order
	for _, kind := range Kinds {
		r.place(r.g.defs[specDef[kind]], func(name string) { placed[kind] = append(placed[kind], name) })
	}
	for _, name := range sortedKeys(r.g.defs) {
		if _, ok := r.anchors[name]; !ok {
			return nil, fmt.Errorf("type %s is used but described nowhere", name)
		}
	}
	if err := uniqueAnchors(r.anchors); err != nil {
		return nil, err
	}

	b := &r.b
	b.WriteString("# Inventory reference\n\n")
	b.WriteString("<!-- Generated from the types in spec/ by `go test ./spec -run TestReference -update`; do not edit by hand: the test fails when this file and the types differ. -->\n\n")
	b.WriteString("Every kind and field Kiln reads, generated from the Go types in `spec/`, the same source as the JSON Schema ([kiln.schema.json](kiln.schema.json), `kiln schema`). [inventory.md](inventory.md) explains the kinds with examples.\n\n")
	b.WriteString("- **Required**: the field must be present whenever the object holding it is; a Machine's `bmc.driver` may come from its Profile instead.\n")
	b.WriteString("- **Default**: the value a field takes when it is left out.\n")
	b.WriteString("- Unknown fields are errors. Checks that span documents (references to other objects, duplicate names, MACs and addresses, addresses outside their subnet, an image for `state: deployed`) are made by `kiln validate` and by the server before it applies a revision, and are not listed here; every problem is reported with `file:line:column`.\n\n")

	b.WriteString("## Every document\n\n")
	r.para(r.typeDocs["Header"])
	b.WriteString("| Field | Type | Required | Default | Description |\n|---|---|---|---|---|\n")
	for _, p := range header.Properties {
		s := p.Schema
		switch p.Name {
		case "apiVersion":
			s = &jsonSchema{Type: "string", Description: s.Description, Const: APIVersion}
		case "kind":
			s = &jsonSchema{Type: "string", Description: s.Description, Enum: Kinds}
		case "spec":
			s = &jsonSchema{Type: "object", Description: "The kind's fields: see the kind's section below."}
		}
		r.row(p.Name, s, contains(header.Required, p.Name))
	}
	b.WriteString("\n### Metadata\n\n")
	r.object(r.g.defs["Metadata"])

	for _, kind := range Kinds {
		fmt.Fprintf(b, "\n## %s\n\n", kind)
		r.para(r.typeDocs[kind])
		fmt.Fprintf(b, "`kind: %s`; the fields of its `spec`:\n\n", kind)
		r.object(r.g.defs[specDef[kind]])
		for _, name := range placed[kind] {
			fmt.Fprintf(b, "\n### %s\n\n", name)
			r.para(r.typeDocs[name])
			r.object(r.g.defs[name])
		}
	}

	b.WriteString("\n## Value types\n")
	for _, name := range values {
		d := r.g.defs[name]
		fmt.Fprintf(b, "\n### %s\n\n", name)
		r.para(d.Description)
		r.para(r.typeDocs[name])
		shapes := d.OneOf
		if shapes == nil {
			shapes = []*jsonSchema{d}
		}
		b.WriteString("Written as:\n\n")
		var tables []*jsonSchema
		for _, s := range shapes {
			switch {
			case s.Type == "object":
				fmt.Fprintf(b, "- a mapping: %s\n", strings.TrimSpace(s.Description+" "+objectBounds(s)))
				tables = append(tables, s)
			case s.Pattern != "":
				fmt.Fprintf(b, "- %s matching `%s`\n", article(typeText(s, r.anchors)), s.Pattern)
			default:
				fmt.Fprintf(b, "- %s\n", article(typeText(s, r.anchors)))
			}
		}
		for _, s := range tables {
			b.WriteString("\n")
			r.object(s)
		}
	}
	return []byte(b.String()), nil
}

type refGen struct {
	g        *schemaGen
	typeDocs map[string]string // Go doc comments by type name
	anchors  map[string]string // definition -> the anchor of its section
	b        strings.Builder
}

// place gives every struct type reachable from s, not yet described
// elsewhere, a section (depth first, in field order).
func (r *refGen) place(s *jsonSchema, add func(string)) {
	for _, p := range s.Properties {
		for _, name := range refsOf(p.Schema) {
			if _, done := r.anchors[name]; done {
				continue
			}
			r.anchors[name] = slug(name)
			add(name)
			r.place(r.g.defs[name], add)
		}
	}
}

// refsOf lists the definitions a field's schema refers to.
func refsOf(s *jsonSchema) []string {
	if s == nil {
		return nil
	}
	var out []string
	if s.Ref != "" {
		out = append(out, defName(s.Ref))
	}
	out = append(out, refsOf(s.Items)...)
	if ap, ok := s.AdditionalProperties.(*jsonSchema); ok {
		out = append(out, refsOf(ap)...)
	}
	return out
}

func (r *refGen) para(text string) {
	if text != "" {
		r.b.WriteString(text + "\n\n")
	}
}

// object writes the table of an object's fields.
func (r *refGen) object(s *jsonSchema) {
	r.b.WriteString("| Field | Type | Required | Default | Description |\n|---|---|---|---|---|\n")
	for _, p := range s.Properties {
		r.row(p.Name, p.Schema, contains(s.Required, p.Name))
	}
}

func (r *refGen) row(name string, s *jsonSchema, required bool) {
	req := "no"
	if required {
		req = "yes"
	}
	def := ""
	if s.Default != nil {
		def = "`" + fmt.Sprint(s.Default) + "`"
	}
	desc := strings.ReplaceAll(s.Description, "<", `\<`) // not an HTML tag
	if c := fmt.Sprint(s.Const); s.Const != nil && !strings.Contains(desc, c) {
		desc = sentence(desc, "Exactly `"+c+"`.")
	}
	if len(s.Enum) > 0 {
		desc = sentence(desc, "One of "+codeList(s.Enum)+".")
	}
	if s.Pattern != "" {
		desc = sentence(desc, "Must match `"+s.Pattern+"`.")
	}
	fmt.Fprintf(&r.b, "| `%s` | %s | %s | %s | %s |\n", name, cell(typeText(s, r.anchors)), req, cell(def), cell(desc))
}

// typeText names a schema's type, linking defined types to their section.
func typeText(s *jsonSchema, anchors map[string]string) string {
	switch {
	case s.Ref != "":
		name := defName(s.Ref)
		return "[" + name + "](#" + anchors[name] + ")"
	case s.Type == "array":
		return "list of " + typeText(s.Items, anchors)
	case s.Type == "object":
		if ap, ok := s.AdditionalProperties.(*jsonSchema); ok {
			return "map of string to " + typeText(ap, anchors)
		}
		return "object"
	case s.Type == "integer" && s.Minimum != nil:
		return fmt.Sprintf("integer ≥ %d", *s.Minimum)
	case s.Type != "":
		return s.Type
	}
	return "any"
}

func objectBounds(s *jsonSchema) string {
	if s.MinProperties != nil && s.MaxProperties != nil && *s.MinProperties == 1 && *s.MaxProperties == 1 {
		return "(exactly one field)"
	}
	return ""
}

// article puts "a" or "an" before a type's name.
func article(typ string) string {
	if strings.IndexAny(typ[:1], "aeiou") == 0 {
		return "an " + typ
	}
	return "a " + typ
}

func defName(ref string) string { return strings.TrimPrefix(ref, "#/$defs/") }

func codeList(vals []string) string {
	q := make([]string, len(vals))
	for i, v := range vals {
		q[i] = "`" + v + "`"
	}
	return strings.Join(q, ", ")
}

func sentence(text, more string) string {
	if text == "" {
		return more
	}
	return text + " " + more
}

// cell escapes a Markdown table cell ("|" splits cells, even in code).
func cell(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "|", `\|`), "\n", " ")
}

// slug is GitHub's anchor of a heading.
func slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}

func uniqueAnchors(anchors map[string]string) error {
	by := map[string]string{}
	for _, name := range sortedKeys(anchors) {
		a := anchors[name]
		if other, ok := by[a]; ok && other != name {
			return fmt.Errorf("types %s and %s share the anchor #%s", other, name, a)
		}
		by[a] = name
	}
	return nil
}

// typeDocs reads the doc comments of the package's types from its source,
// as one line each.
func typeDocs(dir string) (map[string]string, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	docs := map[string]string{}
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, parser.ParseComments)
		if err != nil {
			return nil, err
		}
		for _, decl := range file.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.TYPE {
				continue
			}
			for _, spec := range gd.Specs {
				ts := spec.(*ast.TypeSpec)
				doc := ts.Doc
				if doc == nil && len(gd.Specs) == 1 {
					doc = gd.Doc
				}
				if doc != nil {
					docs[ts.Name.Name] = strings.Join(strings.Fields(doc.Text()), " ")
				}
			}
		}
	}
	return docs, nil
}
