package etag

import "testing"

func TestVersion(t *testing.T) {
	for tag, want := range map[string]string{
		`"abc"`:   "abc",
		"abc":     "abc",
		`"a-2"`:   "a-2",
		`""`:      "",
		`"`:       `"`,
		"":        "",
		`W/"abc"`: `W/"abc"`,
	} {
		if got := Version(tag); got != want {
			t.Errorf("Version(%q) = %q, want %q", tag, got, want)
		}
	}
}

func TestValid(t *testing.T) {
	for _, v := range []string{"abc", "0x8DB1234", "d41d8cd98f00b204e9800998ecf8427e-2", "a*"} {
		if !Valid(v) {
			t.Errorf("Valid(%q) = false", v)
		}
	}
	for _, v := range []string{"", "*", `"abc"`, "a b", "a\x00", "a\\b", "ä", "a\n"} {
		if Valid(v) {
			t.Errorf("Valid(%q) = true", v)
		}
	}
	if got := Header("abc"); got != `"abc"` {
		t.Errorf("Header(abc) = %q", got)
	}
}
