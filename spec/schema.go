package spec

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
)

// SchemaID is the $id of the JSON Schema that Schema returns.
const SchemaID = "https://kiln.dev/schemas/v1alpha1/kiln.schema.json"

// Patterns for the types written as text (ECMA-262 and RE2 alike).
const (
	durationPattern = `^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$`
	sizePattern     = `^[0-9]+(\.[0-9]+)?(KiB|MiB|GiB|TiB|K|M|G|T|B)?$`
)

// notRequired lists fields without omitempty that a Profile may supply, so
// a machine's own document may leave them out ("Type.yamlName").
var notRequired = map[string]bool{
	"BMC.driver": true,
}

// fieldPatterns adds a pattern to some string fields ("Type.yamlName").
var fieldPatterns = map[string]string{
	"Metadata.name":   nameRE.String(),
	"Artifact.sha256": `^[0-9a-fA-F]{64}$`,
}

// Schema returns a JSON Schema (draft 2020-12) for one Kiln document,
// generated from the Go types so that the two never disagree. Editors use
// it to complete and check inventory files; Load remains the authority
// (cross-document checks such as references and address clashes are
// beyond a schema).
func Schema() ([]byte, error) {
	g := &schemaGen{defs: map[string]*jsonSchema{}}
	// The top level is a Rack's fields (Header inline, then spec) with the
	// header constrained and spec chosen by kind below.
	top, err := g.objectSchema(reflect.TypeOf(Rack{}))
	if err != nil {
		return nil, err
	}
	top.Schema = "https://json-schema.org/draft/2020-12/schema"
	top.ID = SchemaID
	top.Title = "Kiln document"
	top.Description = "One document of a Kiln inventory: a " + strings.Join(Kinds[:len(Kinds)-1], ", ") + " or " + Kinds[len(Kinds)-1] + "."
	for i := range top.Properties {
		p := &top.Properties[i]
		switch p.Name {
		case "apiVersion":
			p.Schema = &jsonSchema{Description: p.Schema.Description, Const: APIVersion}
		case "kind":
			p.Schema = &jsonSchema{Description: p.Schema.Description, Enum: Kinds}
		case "spec":
			p.Schema = &jsonSchema{Description: "The kind's specification.", Type: "object"}
		}
	}
	for _, kind := range Kinds {
		st, ok := reflect.TypeOf(newObject(kind)).Elem().FieldByName("Spec")
		if !ok {
			return nil, fmt.Errorf("spec: kind %s has no Spec field", kind)
		}
		spec, err := g.typeSchema(st.Type)
		if err != nil {
			return nil, err
		}
		top.AllOf = append(top.AllOf, &jsonSchema{
			If: &jsonSchema{
				Properties: properties{{"kind", &jsonSchema{Const: kind}}},
				Required:   []string{"kind"},
			},
			Then: &jsonSchema{Properties: properties{{"spec", spec}}},
		})
	}
	for _, name := range sortedKeys(g.defs) {
		top.Defs = append(top.Defs, property{name, g.defs[name]})
	}
	b, err := marshalJSON(top, "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// newObject returns an empty object of a kind, or nil.
func newObject(kind string) Object {
	switch kind {
	case KindRack:
		return &Rack{}
	case KindSubnet:
		return &Subnet{}
	case KindImage:
		return &Image{}
	case KindMachine:
		return &Machine{}
	case KindProfile:
		return &Profile{}
	}
	return nil
}

// jsonSchema is the subset of JSON Schema Kiln uses, in a readable order.
type jsonSchema struct {
	Schema               string        `json:"$schema,omitempty"`
	ID                   string        `json:"$id,omitempty"`
	Title                string        `json:"title,omitempty"`
	Ref                  string        `json:"$ref,omitempty"`
	Description          string        `json:"description,omitempty"`
	Type                 string        `json:"type,omitempty"`
	Const                any           `json:"const,omitempty"`
	Enum                 []string      `json:"enum,omitempty"`
	Default              any           `json:"default,omitempty"`
	Pattern              string        `json:"pattern,omitempty"`
	Minimum              *int          `json:"minimum,omitempty"`
	MinProperties        *int          `json:"minProperties,omitempty"`
	MaxProperties        *int          `json:"maxProperties,omitempty"`
	Properties           properties    `json:"properties,omitempty"`
	Required             []string      `json:"required,omitempty"`
	AdditionalProperties any           `json:"additionalProperties,omitempty"`
	Items                *jsonSchema   `json:"items,omitempty"`
	OneOf                []*jsonSchema `json:"oneOf,omitempty"`
	AllOf                []*jsonSchema `json:"allOf,omitempty"`
	If                   *jsonSchema   `json:"if,omitempty"`
	Then                 *jsonSchema   `json:"then,omitempty"`
	Defs                 properties    `json:"$defs,omitempty"`
}

type property struct {
	Name   string
	Schema *jsonSchema
}

// properties is a JSON object that keeps its keys in order.
type properties []property

func (ps properties) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, p := range ps {
		if i > 0 {
			b.WriteByte(',')
		}
		k, err := marshalJSON(p.Name, "")
		if err != nil {
			return nil, err
		}
		v, err := marshalJSON(p.Schema, "")
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// marshalJSON is json.Marshal without HTML escaping, so that descriptions
// such as "<link>.<id>" stay readable.
func marshalJSON(v any, indent string) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if indent != "" {
		enc.SetIndent("", indent)
	}
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

type schemaGen struct {
	defs map[string]*jsonSchema
}

var (
	durationType  = reflect.TypeOf(Duration{})
	sizeType      = reflect.TypeOf(Size(0))
	secretRefType = reflect.TypeOf(SecretRef{})
)

func ref(name string) *jsonSchema { return &jsonSchema{Ref: "#/$defs/" + name} }

func intPtr(n int) *int { return &n }

// typeSchema returns the schema of a Go type, adding struct types to $defs.
func (g *schemaGen) typeSchema(t reflect.Type) (*jsonSchema, error) {
	switch t {
	case durationType:
		g.defs["Duration"] = &jsonSchema{
			Description: "A duration such as 90s, 30m or 1h30m.",
			Type:        "string",
			Pattern:     durationPattern,
		}
		return ref("Duration"), nil
	case sizeType:
		g.defs["Size"] = &jsonSchema{
			Description: "A number of bytes: a whole number, or a number with a unit such as 512M, 100G or 1.5TiB (K, M, G, T are powers of 1000; KiB, MiB, GiB, TiB powers of 1024).",
			OneOf: []*jsonSchema{
				{Type: "string", Pattern: sizePattern},
				{Type: "integer", Minimum: intPtr(0)},
			},
		}
		return ref("Size"), nil
	case secretRefType:
		obj, err := g.objectSchema(t)
		if err != nil {
			return nil, err
		}
		obj.Description = "Where the rack agent finds the secret: exactly one of fromFile and fromEnv."
		obj.MinProperties, obj.MaxProperties = intPtr(1), intPtr(1)
		g.defs["SecretRef"] = &jsonSchema{
			Description: "A secret kept out of git: {fromFile: PATH} or {fromEnv: VARIABLE}.",
			OneOf: []*jsonSchema{
				{Type: "string", Description: "A plaintext secret. Accepted, but it draws a warning: secrets do not belong in a repository."},
				obj,
			},
		}
		return ref("SecretRef"), nil
	}
	switch t.Kind() {
	case reflect.Pointer:
		return g.typeSchema(t.Elem())
	case reflect.String:
		return &jsonSchema{Type: "string"}, nil
	case reflect.Bool:
		return &jsonSchema{Type: "boolean"}, nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return &jsonSchema{Type: "integer"}, nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return &jsonSchema{Type: "integer", Minimum: intPtr(0)}, nil
	case reflect.Float32, reflect.Float64:
		return &jsonSchema{Type: "number"}, nil
	case reflect.Slice:
		items, err := g.typeSchema(t.Elem())
		if err != nil {
			return nil, err
		}
		return &jsonSchema{Type: "array", Items: items}, nil
	case reflect.Map:
		if t.Key().Kind() != reflect.String {
			return nil, fmt.Errorf("spec: schema: map key %s is not a string", t.Key())
		}
		vals, err := g.typeSchema(t.Elem())
		if err != nil {
			return nil, err
		}
		return &jsonSchema{Type: "object", AdditionalProperties: vals}, nil
	case reflect.Struct:
		name := t.Name()
		if _, done := g.defs[name]; !done {
			g.defs[name] = nil // reserve: breaks cycles
			s, err := g.objectSchema(t)
			if err != nil {
				return nil, err
			}
			g.defs[name] = s
		}
		return ref(name), nil
	}
	return nil, fmt.Errorf("spec: schema: unsupported type %s", t)
}

// objectSchema describes a struct's YAML fields.
func (g *schemaGen) objectSchema(t reflect.Type) (*jsonSchema, error) {
	s := &jsonSchema{Type: "object", AdditionalProperties: false}
	var walk func(t reflect.Type) error
	walk = func(t reflect.Type) error {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "-" || !f.IsExported() {
				continue
			}
			flags := strings.Split(opts, ",")
			if contains(flags, "inline") {
				if err := walk(f.Type); err != nil {
					return err
				}
				continue
			}
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			fs, err := g.fieldSchema(t, f, name)
			if err != nil {
				return err
			}
			s.Properties = append(s.Properties, property{name, fs})
			if !contains(flags, "omitempty") && !notRequired[t.Name()+"."+name] {
				s.Required = append(s.Required, name)
			}
		}
		return nil
	}
	if err := walk(t); err != nil {
		return nil, err
	}
	return s, nil
}

// fieldSchema is the schema of one field with its doc, enum and default.
func (g *schemaGen) fieldSchema(parent reflect.Type, f reflect.StructField, name string) (*jsonSchema, error) {
	s, err := g.typeSchema(f.Type)
	if err != nil {
		return nil, err
	}
	if s.Ref != "" { // never modify a shared definition: wrap the reference
		s = &jsonSchema{Ref: s.Ref}
	}
	s.Description = f.Tag.Get("doc")
	if enum, ok := f.Tag.Lookup("enum"); ok {
		s.Enum = strings.Split(enum, ",")
	}
	if p, ok := fieldPatterns[parent.Name()+"."+name]; ok {
		s.Pattern = p
	}
	if def, ok := f.Tag.Lookup("default"); ok {
		s.Default = def
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch ft.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
			n, err := strconv.ParseInt(def, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("spec: schema: %s.%s: bad default %q", parent.Name(), name, def)
			}
			s.Default = n
		case reflect.Bool:
			b, err := strconv.ParseBool(def)
			if err != nil {
				return nil, fmt.Errorf("spec: schema: %s.%s: bad default %q", parent.Name(), name, def)
			}
			s.Default = b
		}
	}
	return s, nil
}
