package spec

import (
	"reflect"
	"strconv"
	"strings"
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
		n.Set(v)
		for i := 0; i < v.NumField(); i++ {
			if v.Type().Field(i).IsExported() {
				n.Field(i).Set(deepCopy(v.Field(i)))
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
	for i := 0; i < dst.NumField(); i++ {
		if !dst.Type().Field(i).IsExported() {
			continue
		}
		d, s := dst.Field(i), src.Field(i)
		switch {
		case s.IsZero():
		case d.IsZero():
			d.Set(deepCopy(s))
		case dst.Type().Field(i).Tag.Get("merge") == "replace":
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
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			fv := v.Field(i)
			if def, ok := f.Tag.Lookup("default"); ok && fv.IsZero() {
				setScalar(fv, def)
				continue
			}
			applyDefaults(fv)
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
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			p := path
			if !strings.Contains(opts, "inline") {
				p = join(path, name)
			}
			fv := v.Field(i)
			if enum, ok := f.Tag.Lookup("enum"); ok && fv.Kind() == reflect.String && fv.String() != "" {
				allowed := strings.Split(enum, ",")
				if !contains(allowed, fv.String()) {
					msg := strconv.Quote(fv.String()) + " is not one of " + strings.Join(allowed, ", ")
					if s := suggest(fv.String(), allowed); s != "" {
						msg += " (did you mean " + strconv.Quote(s) + "?)"
					}
					report(p, msg)
				}
				continue
			}
			checkEnums(fv, p, report)
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
