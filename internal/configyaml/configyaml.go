// Package configyaml decodes backupd's YAML config files strictly and
// explains what is wrong in one line: an unknown key is named with the
// keys accepted in its place, a value of the wrong kind with the key's
// dotted path and what it wants. Errors never quote a value (it may be a
// secret) and never name a Go type.
package configyaml

import (
	"bytes"
	"encoding"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Decode decodes the YAML document data into v, a pointer to a struct
// whose fields carry yaml tags. An empty document leaves v as it is.
func Decode(data []byte, v any) error {
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		return syntaxError(err)
	}
	if len(doc.Content) == 0 {
		return nil
	}
	return DecodeNode(doc.Content[0], v, "")
}

// DecodeNode decodes node into v as Decode does; path is the dotted key
// path of node in its document ("" for the top), used in errors.
func DecodeNode(node *yaml.Node, v any, path string) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return errors.New("configyaml: Decode needs a non-nil pointer")
	}
	if err := check(node, rv.Type().Elem(), path); err != nil {
		return err
	}
	if err := node.Decode(v); err != nil {
		// check has seen every key and value; this is a safety net that
		// still keeps to one line.
		return fmt.Errorf("%s%s", where(node, path), oneLine(err.Error()))
	}
	return nil
}

// Keys returns the dotted paths of every key a struct type accepts, its
// nested sections' keys included ("storage", "storage.url", ...), in the
// order of the fields.
func Keys(t reflect.Type) []string {
	var out []string
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		for _, f := range fields(t) {
			out = append(out, prefix+f.name)
			ft := f.typ
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if section(ft) {
				walk(ft, prefix+f.name+".")
			}
		}
	}
	walk(t, "")
	return out
}

var (
	durationType  = reflect.TypeOf(time.Duration(0))
	unmarshalType = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()
	textType      = reflect.TypeOf((*encoding.TextUnmarshaler)(nil)).Elem()
)

// section reports whether t is a struct decoded key by key (not a
// scalar with an unmarshaler of its own).
func section(t reflect.Type) bool {
	if t.Kind() != reflect.Struct {
		return false
	}
	p := reflect.PointerTo(t)
	return !p.Implements(unmarshalType) && !p.Implements(textType)
}

type field struct {
	name string
	typ  reflect.Type
}

// fields lists the keys of a struct type as yaml.v3 names them (the tag's
// name, else the field's name lower-cased), skipping "-" and unexported
// fields and flattening inline ones.
func fields(t reflect.Type) []field {
	var out []field
	for i := range t.NumField() {
		sf := t.Field(i)
		if !sf.IsExported() {
			continue
		}
		tag := sf.Tag.Get("yaml")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if strings.Contains(","+opts+",", ",inline,") {
			out = append(out, fields(sf.Type)...)
			continue
		}
		if name == "" {
			name = strings.ToLower(sf.Name)
		}
		out = append(out, field{name, sf.Type})
	}
	return out
}

// check walks node against type t and reports the first key or value t
// does not accept.
func check(node *yaml.Node, t reflect.Type, path string) error {
	if node.Kind == yaml.AliasNode {
		return check(node.Alias, t, path)
	}
	if isNull(node) {
		return nil // leaves the field as it is
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case section(t):
		if node.Kind != yaml.MappingNode {
			return fmt.Errorf("%swant a section of keys (%s)", where(node, path), strings.Join(names(t), ", "))
		}
		fs := fields(t)
		seen := map[string]bool{}
		for i := 0; i+1 < len(node.Content); i += 2 {
			k, v := node.Content[i], node.Content[i+1]
			key := k.Value
			if k.Kind != yaml.ScalarNode {
				return fmt.Errorf("%sa key must be a plain name", where(k, path))
			}
			if seen[key] {
				return fmt.Errorf("%skey %q given twice", where(k, path), key)
			}
			seen[key] = true
			var ft reflect.Type
			for _, f := range fs {
				if f.name == key {
					ft = f.typ
					break
				}
			}
			if ft == nil {
				in := ""
				if path != "" {
					in = " in " + path
				}
				h := hint(t, key)
				if h != "" {
					h = "; " + h
				}
				return fmt.Errorf("line %d: unknown key %q%s (accepted: %s)%s", k.Line, key, in, strings.Join(names(t), ", "), h)
			}
			if err := check(v, ft, join(path, key)); err != nil {
				return err
			}
		}
		return nil
	case t.Kind() == reflect.Slice && !reflect.PointerTo(t).Implements(textType):
		if node.Kind != yaml.SequenceNode {
			return fmt.Errorf("%swant a list", where(node, path))
		}
		for i, item := range node.Content {
			if err := check(item, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		return nil
	case t.Kind() == reflect.Map:
		if node.Kind != yaml.MappingNode {
			return fmt.Errorf("%swant a mapping", where(node, path))
		}
		for i := 0; i+1 < len(node.Content); i += 2 {
			if err := check(node.Content[i+1], t.Elem(), join(path, node.Content[i].Value)); err != nil {
				return err
			}
		}
		return nil
	}
	// A scalar: decode it alone to see that it fits.
	if node.Kind != yaml.ScalarNode {
		return fmt.Errorf("%swant %s, not a %s", where(node, path), want(t), kindName(node.Kind))
	}
	if err := node.Decode(reflect.New(t).Interface()); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) || !implementsOwn(t) {
			return fmt.Errorf("%swant %s", where(node, path), want(t))
		}
		return fmt.Errorf("%s%s", where(node, path), oneLine(err.Error()))
	}
	return nil
}

// Hinter is implemented by a config struct that knows what people who
// write an unknown key in it usually mean: ConfigHint returns a short
// hint for key, or "".
type Hinter interface {
	ConfigHint(key string) string
}

var hinterType = reflect.TypeOf((*Hinter)(nil)).Elem()

// hint asks t (or *t) for a hint about key.
func hint(t reflect.Type, key string) string {
	if t.Implements(hinterType) {
		return reflect.New(t).Elem().Interface().(Hinter).ConfigHint(key)
	}
	if reflect.PointerTo(t).Implements(hinterType) {
		return reflect.New(t).Interface().(Hinter).ConfigHint(key)
	}
	return ""
}

// implementsOwn reports whether t decodes itself (its errors are its own,
// worth showing).
func implementsOwn(t reflect.Type) bool {
	p := reflect.PointerTo(t)
	return p.Implements(unmarshalType) || p.Implements(textType)
}

// want describes the values of type t.
func want(t reflect.Type) string {
	if t == durationType {
		return "a duration such as 30s, 10m or 6h"
	}
	if implementsOwn(t) {
		return "a value of the documented form"
	}
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "a whole number"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number, not negative"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	}
	return "a value of the documented form"
}

// names lists the keys a struct type accepts.
func names(t reflect.Type) []string {
	var out []string
	for _, f := range fields(t) {
		out = append(out, f.name)
	}
	return out
}

func kindName(k yaml.Kind) string {
	switch k {
	case yaml.MappingNode:
		return "section"
	case yaml.SequenceNode:
		return "list"
	}
	return "value"
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// where is the "line N: path: " that starts an error about node.
func where(node *yaml.Node, path string) string {
	s := fmt.Sprintf("line %d: ", node.Line)
	if path != "" {
		s += path + ": "
	}
	return s
}

// syntaxError makes a parser error one line without yaml.v3's "yaml: "
// prefix.
func syntaxError(err error) error {
	return errors.New(oneLine(strings.TrimPrefix(err.Error(), "yaml: ")))
}

// oneLine joins the lines of s with "; ".
func oneLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := range lines {
		lines[i] = strings.TrimSpace(lines[i])
	}
	return strings.Join(lines, "; ")
}
