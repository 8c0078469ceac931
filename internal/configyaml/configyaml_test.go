package configyaml

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

type inner struct {
	Secret string        `yaml:"secret"`
	Count  int           `yaml:"count"`
	Wait   time.Duration `yaml:"wait"`
	On     *bool         `yaml:"on"`
}

func (inner) ConfigHint(key string) string {
	if key == "secrte" {
		return "the key is secret"
	}
	return ""
}

type outer struct {
	Name  string            `yaml:"name"`
	Inner inner             `yaml:"inner"`
	List  []string          `yaml:"list"`
	Tags  map[string]string `yaml:"tags"`
	Skip  string            `yaml:"-"`
	Plain int
}

func TestDecode(t *testing.T) {
	var o outer
	err := Decode([]byte("name: n\ninner:\n  secret: s3cr3t\n  count: 3\n  wait: 5s\n  on: true\nlist: [a, b]\ntags: {k: v}\nplain: 7\n"), &o)
	if err != nil {
		t.Fatal(err)
	}
	if o.Name != "n" || o.Inner.Count != 3 || o.Inner.Wait != 5*time.Second || o.Inner.On == nil || !*o.Inner.On ||
		len(o.List) != 2 || o.Tags["k"] != "v" || o.Plain != 7 {
		t.Fatalf("decoded %+v", o)
	}
	if err := Decode(nil, &o); err != nil {
		t.Fatalf("empty document: %v", err)
	}
}

func TestErrorsAreOneLineAndNameTheKey(t *testing.T) {
	for _, c := range []struct{ doc, want string }{
		{"nmae: x\n", `line 1: unknown key "nmae" (accepted: name, inner, list, tags, plain)`},
		{"inner:\n  secrte: s3cr3t\n", `line 2: unknown key "secrte" in inner (accepted: secret, count, wait, on); the key is secret`},
		{"inner:\n  count: s3cr3t\n", `line 2: inner.count: want a whole number`},
		{"inner:\n  wait: 5\n", `line 2: inner.wait: want a duration such as 30s, 10m or 6h`},
		{"inner:\n  on: s3cr3t\n", `line 2: inner.on: want true or false`},
		{"inner: s3cr3t\n", `line 1: inner: want a section of keys (secret, count, wait, on)`},
		{"list: s3cr3t\n", `line 1: list: want a list`},
		{"list: [[a]]\n", `line 1: list[0]: want a string, not a list`},
		{"name: a\nname: b\n", `line 2: key "name" given twice`},
		{"skip: x\n", `line 1: unknown key "skip" (accepted: name, inner, list, tags, plain)`},
		{"name: [\n", `line 1: did not find expected node content`},
	} {
		err := Decode([]byte(c.doc), &outer{})
		if err == nil || err.Error() != c.want {
			t.Errorf("%q: %v\nwant %s", c.doc, err, c.want)
			continue
		}
		if strings.Contains(err.Error(), "s3cr3t") || strings.Contains(err.Error(), "\n") || strings.Contains(err.Error(), "configyaml.") {
			t.Errorf("%q: %q quotes a value, a type or spans lines", c.doc, err)
		}
	}
}

func TestKeys(t *testing.T) {
	got := strings.Join(Keys(reflect.TypeOf(outer{})), " ")
	want := "name inner inner.secret inner.count inner.wait inner.on list tags plain"
	if got != want {
		t.Fatalf("Keys = %s\nwant   %s", got, want)
	}
}
