package spec

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"

	"gopkg.in/yaml.v3"
)

// nodeBudget bounds the work spent on one document, so that alias bombs
// ("billion laughs") end in an error instead of eating memory.
const nodeBudget = 200_000

// scalarParser is implemented by types that are written as one scalar
// (Duration, Size) or may be (SecretRef).
type scalarParser interface{ parseScalar(string) error }

// decoder decodes one yaml.Node tree into Go values strictly: unknown
// fields, duplicate keys and wrong types are Problems with positions.
type decoder struct {
	file     string
	budget   int
	problems []Problem
}

func (d *decoder) errorf(n *yaml.Node, path, format string, args ...any) {
	d.problems = append(d.problems, Problem{
		Pos:      Pos{File: d.file, Line: n.Line, Col: n.Column},
		Severity: Error,
		Field:    path,
		Message:  fmt.Sprintf(format, args...),
	})
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	d.budget--
	if d.budget == 0 {
		d.errorf(n, path, "document too complex (more than %d nodes after expanding aliases)", nodeBudget)
	}
	if d.budget <= 0 {
		return
	}
	if n.Kind == yaml.AliasNode {
		d.decode(n.Alias, v, path)
		return
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // leave the zero value: same as absent
	}
	if v.Type() == reflect.TypeFor[Duration]() && n.Kind != yaml.ScalarNode {
		// Duration is a struct underneath: don't decode it as a mapping.
		d.errorf(n, path, "expected a duration such as 1h, got %s", describe(n))
		return
	}
	if n.Kind == yaml.ScalarNode && v.CanAddr() {
		if sp, ok := v.Addr().Interface().(scalarParser); ok {
			if err := sp.parseScalar(n.Value); err != nil {
				d.errorf(n, path, "%v", err)
			}
			return
		}
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(n, v.Elem(), path)
	case reflect.Struct:
		d.decodeStruct(n, v, path)
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			d.errorf(n, path, "expected a mapping of names to values, got %s", describe(n))
			return
		}
		if v.IsNil() {
			v.Set(reflect.MakeMap(v.Type()))
		}
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				d.errorf(k, path, "keys must be plain strings")
				continue
			}
			if seen[k.Value] {
				d.errorf(k, join(path, k.Value), "key %q repeated", k.Value)
				continue
			}
			seen[k.Value] = true
			elem := reflect.New(v.Type().Elem()).Elem()
			d.decode(val, elem, join(path, k.Value))
			v.SetMapIndex(reflect.ValueOf(k.Value), elem)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.errorf(n, path, "expected a list, got %s", describe(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, c := range n.Content {
			d.decode(c, s.Index(i), path+"["+strconv.Itoa(i)+"]")
		}
		v.Set(s)
	default:
		if n.Kind != yaml.ScalarNode {
			d.errorf(n, path, "expected %s, got %s", typeName(v.Type()), describe(n))
			return
		}
		if typeName(v.Type()) == "a whole number" && n.ShortTag() != "!!int" {
			// yaml.v3 would truncate 1.5 to 1.
			d.errorf(n, path, "expected %s, got %q", typeName(v.Type()), n.Value)
			return
		}
		if err := n.Decode(v.Addr().Interface()); err != nil {
			d.errorf(n, path, "expected %s, got %q", typeName(v.Type()), n.Value)
		}
	}
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.errorf(n, path, "expected a mapping, got %s", describe(n))
		return
	}
	fields := fieldsOf(v.Type())
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.errorf(k, path, "keys must be plain strings")
			continue
		}
		if k.Value == "<<" {
			d.errorf(k, path, "merge keys (<<) are not supported; use a Profile for shared settings")
			continue
		}
		if seen[k.Value] {
			d.errorf(k, join(path, k.Value), "field %q repeated", k.Value)
			continue
		}
		seen[k.Value] = true
		f, ok := fields.byName[k.Value]
		if !ok {
			msg := fmt.Sprintf("unknown field %q", k.Value)
			if s := suggest(k.Value, fields.names); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			d.errorf(k, path, "%s", msg)
			continue
		}
		d.decode(val, v.FieldByIndex(f), join(path, k.Value))
	}
}

type structFields struct {
	byName map[string][]int
	names  []string
}

var fieldCache sync.Map // reflect.Type → *structFields

// fieldsOf maps YAML names to field indexes, following inline fields.
func fieldsOf(t reflect.Type) *structFields {
	if c, ok := fieldCache.Load(t); ok {
		return c.(*structFields)
	}
	sf := &structFields{byName: map[string][]int{}}
	var walk func(t reflect.Type, index []int)
	walk = func(t reflect.Type, index []int) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "-" || !f.IsExported() {
				continue
			}
			idx := append(append([]int(nil), index...), i)
			if strings.Contains(opts, "inline") {
				walk(f.Type, idx)
				continue
			}
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			sf.byName[name] = idx
			sf.names = append(sf.names, name)
		}
	}
	walk(t, nil)
	fieldCache.Store(t, sf)
	return sf
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if len(n.Value) > 40 {
			return fmt.Sprintf("%q", n.Value[:40]+"…")
		}
		return fmt.Sprintf("%q", n.Value)
	}
	return "something else"
}

func typeName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	}
	return t.String()
}

// suggest returns the candidate closest to s within edit distance 2.
func suggest(s string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		if d := editDistance(strings.ToLower(s), strings.ToLower(c)); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
