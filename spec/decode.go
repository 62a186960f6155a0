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
// fields, duplicate keys and wrong types are Problems with positions. It
// decodes what it can around a problem, and records in undecoded the paths
// whose values it could not take, so that checks of the object stay quiet
// about them (see Header.decoded).
type decoder struct {
	file      string
	budget    int
	problems  []Problem
	undecoded []string
}

func (d *decoder) errorf(n *yaml.Node, path, format string, args ...any) {
	d.problems = append(d.problems, Problem{
		Pos:      Pos{File: d.file, Line: n.Line, Col: n.Column},
		Severity: Error,
		Field:    path,
		Message:  fmt.Sprintf(format, args...),
	})
}

// wrongf reports a value that could not be decoded at path.
func (d *decoder) wrongf(n *yaml.Node, path, format string, args ...any) {
	d.errorf(n, path, format, args...)
	d.undecoded = append(d.undecoded, path)
}

// exhausted reports whether the document ran over its node budget, in
// which case what was decoded is only a part of it.
func (d *decoder) exhausted() bool { return d.budget <= 0 }

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// decode decodes n into v. A null leaves v's zero value, as if absent.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	d.budget--
	if d.budget == 0 {
		d.errorf(n, path, "document too complex (more than %d nodes after expanding aliases)", nodeBudget)
	}
	switch {
	case d.budget <= 0:
	case n.Kind == yaml.AliasNode:
		d.decode(n.Alias, v, path)
	case n.Kind == yaml.ScalarNode && n.Tag == "!!null":
	case v.Type() == reflect.TypeFor[Duration]() && n.Kind != yaml.ScalarNode:
		// Duration is a struct underneath: don't decode it as a mapping.
		d.wrongf(n, path, "expected a duration such as 1h, got %s", describe(n))
	case n.Kind == yaml.ScalarNode && isScalarParser(v):
		if err := v.Addr().Interface().(scalarParser).parseScalar(n.Value); err != nil {
			d.wrongf(n, path, "%v", err)
		}
	default:
		d.decodeKind(n, v, path)
	}
}

func isScalarParser(v reflect.Value) bool {
	if !v.CanAddr() {
		return false
	}
	_, ok := v.Addr().Interface().(scalarParser)
	return ok
}

// decodeKind decodes n by the kind of v.
func (d *decoder) decodeKind(n *yaml.Node, v reflect.Value, path string) {
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(n, v.Elem(), path)
	case reflect.Struct:
		d.decodeStruct(n, v, path)
	case reflect.Map:
		d.decodeMap(n, v, path)
	case reflect.Slice:
		d.decodeSlice(n, v, path)
	default:
		d.decodeScalar(n, v, path)
	}
}

func (d *decoder) decodeMap(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.wrongf(n, path, "expected a mapping of names to values, got %s", describe(n))
		return
	}
	if v.IsNil() {
		v.Set(reflect.MakeMap(v.Type()))
	}
	d.pairs(n, path, "key", nil, func(k, val *yaml.Node) {
		elem := reflect.New(v.Type().Elem()).Elem()
		d.decode(val, elem, join(path, k.Value))
		v.SetMapIndex(reflect.ValueOf(k.Value), elem)
	})
}

func (d *decoder) decodeSlice(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.SequenceNode {
		d.wrongf(n, path, "expected a list, got %s", describe(n))
		return
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, c := range n.Content {
		d.decode(c, s.Index(i), path+"["+strconv.Itoa(i)+"]")
	}
	v.Set(s)
}

func (d *decoder) decodeScalar(n *yaml.Node, v reflect.Value, path string) {
	switch {
	case n.Kind != yaml.ScalarNode:
		d.wrongf(n, path, "expected %s, got %s", typeName(v.Type()), describe(n))
	case typeName(v.Type()) == "a whole number" && n.ShortTag() != "!!int":
		// yaml.v3 would truncate 1.5 to 1.
		d.wrongf(n, path, "expected %s, got %q", typeName(v.Type()), n.Value)
	case n.Decode(v.Addr().Interface()) != nil:
		d.wrongf(n, path, "expected %s, got %q", typeName(v.Type()), n.Value)
	}
}

// pairs calls fn with each key and value of the mapping n whose key is a
// plain string met for the first time, and reports the other keys; what
// names a key in that report ("key", "field"). A key for which refuse
// returns true (it reported why) is skipped before the repeat check.
func (d *decoder) pairs(n *yaml.Node, path, what string, refuse func(k *yaml.Node) bool, fn func(k, val *yaml.Node)) {
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		switch {
		case k.Kind != yaml.ScalarNode:
			d.errorf(k, path, "keys must be plain strings")
		case refuse != nil && refuse(k):
		case seen[k.Value]:
			d.errorf(k, join(path, k.Value), "%s %q repeated", what, k.Value)
		default:
			seen[k.Value] = true
			fn(k, val)
		}
	}
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.wrongf(n, path, "expected a mapping, got %s", describe(n))
		return
	}
	fields := fieldsOf(v.Type())
	mergeKey := func(k *yaml.Node) bool {
		if k.Value != "<<" {
			return false
		}
		// What the merge would have brought in is missing below path.
		d.wrongf(k, path, "merge keys (<<) are not supported; use a Profile for shared settings")
		return true
	}
	d.pairs(n, path, "field", mergeKey, func(k, val *yaml.Node) {
		f, ok := fields.byName[k.Value]
		if !ok {
			d.unknownField(k, path, fields.names)
			return
		}
		d.decode(val, v.FieldByIndex(f), join(path, k.Value))
	})
}

// unknownField reports a field name that is not one of names. When it is
// close to one, that field is taken as misspelt: not decoded.
func (d *decoder) unknownField(k *yaml.Node, path string, names []string) {
	s := suggest(k.Value, names)
	if s == "" {
		d.errorf(k, path, "unknown field %q", k.Value)
		return
	}
	d.errorf(k, path, "unknown field %q (did you mean %q?)", k.Value, s)
	d.undecoded = append(d.undecoded, join(path, s))
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
