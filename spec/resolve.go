package spec

import (
	"reflect"
	"strconv"
	"strings"
	"sync"
)

// deepCopy returns a copy of v that shares nothing mutable with it.
func deepCopy(v reflect.Value) reflect.Value {
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return v
		}
		n := reflect.New(v.Type().Elem())
		n.Elem().Set(deepCopy(v.Elem()))
		return n
	case reflect.Struct:
		n := reflect.New(v.Type()).Elem()
		n.Set(v) // unexported fields (the document reference) are shared
		for _, f := range fieldInfos(v.Type()) {
			if k := v.Field(f.index).Kind(); k == reflect.Pointer || k == reflect.Slice || k == reflect.Map || k == reflect.Struct {
				n.Field(f.index).Set(deepCopy(v.Field(f.index)))
			}
		}
		return n
	case reflect.Slice:
		if v.IsNil() {
			return v
		}
		n := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
		for i := 0; i < v.Len(); i++ {
			n.Index(i).Set(deepCopy(v.Index(i)))
		}
		return n
	case reflect.Map:
		if v.IsNil() {
			return v
		}
		n := reflect.MakeMapWithSize(v.Type(), v.Len())
		it := v.MapRange()
		for it.Next() {
			n.SetMapIndex(it.Key(), deepCopy(it.Value()))
		}
		return n
	}
	return v
}

func copyOf[T any](p *T) *T {
	return deepCopy(reflect.ValueOf(p)).Interface().(*T)
}

// fill sets every zero field of dst (which the caller owns) from src,
// recursing into nested structs and merging maps; dst's values win. A field
// tagged merge:"replace" (a secret reference) is taken whole from one side.
func fill(dst, src reflect.Value) {
	for _, f := range fieldInfos(dst.Type()) {
		d, s := dst.Field(f.index), src.Field(f.index)
		switch {
		case s.IsZero():
		case d.IsZero():
			d.Set(deepCopy(s))
		case f.replace:
		case d.Kind() == reflect.Struct:
			fill(d, s)
		case d.Kind() == reflect.Pointer && d.Elem().Kind() == reflect.Struct:
			fill(d.Elem(), s.Elem())
		case d.Kind() == reflect.Map:
			it := s.MapRange()
			for it.Next() {
				if !d.MapIndex(it.Key()).IsValid() {
					d.SetMapIndex(it.Key(), it.Value())
				}
			}
		}
	}
}

// fieldInfo is what the resolver needs to know of one struct field; it is
// computed once per type, since tags are slow to parse on every object.
type fieldInfo struct {
	index      int
	path       string // YAML name; empty for inline fields
	enum       []string
	def        string
	hasDefault bool
	replace    bool // merge:"replace"
	leaf       bool // nothing below it can carry tags
}

var fieldInfoCache sync.Map // reflect.Type → []fieldInfo

func fieldInfos(t reflect.Type) []fieldInfo {
	if c, ok := fieldInfoCache.Load(t); ok {
		return c.([]fieldInfo)
	}
	var out []fieldInfo
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		fi := fieldInfo{index: i, path: name, replace: f.Tag.Get("merge") == "replace"}
		if strings.Contains(opts, "inline") {
			fi.path = ""
		}
		if e, ok := f.Tag.Lookup("enum"); ok {
			fi.enum = strings.Split(e, ",")
		}
		fi.def, fi.hasDefault = f.Tag.Lookup("default")
		ft := f.Type
		for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
			ft = ft.Elem()
		}
		fi.leaf = ft.Kind() != reflect.Struct
		out = append(out, fi)
	}
	fieldInfoCache.Store(t, out)
	return out
}

// applyDefaults sets zero fields that carry a `default` tag, recursing into
// structs, non-nil pointers and slices. v must be addressable and owned.
func applyDefaults(v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			applyDefaults(v.Elem())
		}
	case reflect.Slice:
		for i := 0; i < v.Len(); i++ {
			applyDefaults(v.Index(i))
		}
	case reflect.Struct:
		for _, f := range fieldInfos(v.Type()) {
			fv := v.Field(f.index)
			switch {
			case f.hasDefault && fv.IsZero():
				setScalar(fv, f.def)
			case !f.leaf:
				applyDefaults(fv)
			}
		}
	}
}

// setScalar stores a default written as text. Defaults are ours, so a
// failure here is a bug caught by the tests.
func setScalar(v reflect.Value, s string) {
	if sp, ok := v.Addr().Interface().(scalarParser); ok {
		if err := sp.parseScalar(s); err != nil {
			panic("spec: bad default " + s + ": " + err.Error())
		}
		return
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Int, reflect.Int64:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			panic("spec: bad default " + s)
		}
		v.SetInt(n)
	default:
		panic("spec: no default for " + v.Type().String())
	}
}

// checkEnums reports every string field whose value is not in its `enum`
// tag, with its field path.
func checkEnums(v reflect.Value, path string, report func(path, msg string)) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			checkEnums(v.Elem(), path, report)
		}
	case reflect.Slice:
		for i := 0; i < v.Len(); i++ {
			checkEnums(v.Index(i), path+"["+strconv.Itoa(i)+"]", report)
		}
	case reflect.Struct:
		for _, f := range fieldInfos(v.Type()) {
			fv := v.Field(f.index)
			if f.enum != nil {
				if s := fv.String(); s != "" && !contains(f.enum, s) {
					msg := strconv.Quote(s) + " is not one of " + strings.Join(f.enum, ", ")
					if sug := suggest(s, f.enum); sug != "" {
						msg += " (did you mean " + strconv.Quote(sug) + "?)"
					}
					report(join(path, f.path), msg)
				}
				continue
			}
			if !f.leaf {
				checkEnums(fv, join(path, f.path), report)
			}
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
