package retention

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func snaps(n int, every time.Duration, tags map[int]map[string]string) []Snapshot {
	base := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	var out []Snapshot
	for i := range n {
		out = append(out, Snapshot{ID: fmt.Sprintf("s%02d", i), Time: base.Add(time.Duration(i) * every), Tags: tags[i], TagsKnown: true})
	}
	return out
}

func ids(d Decision) (keep, forget string) {
	var k, f []string
	for _, s := range d.Keep {
		k = append(k, s.ID)
	}
	for _, s := range d.Forget {
		f = append(f, s.ID)
	}
	return strings.Join(k, ","), strings.Join(f, ",")
}

func TestApply(t *testing.T) {
	day := 24 * time.Hour
	pinned := map[int]map[string]string{1: {"reason": "prebuild"}, 3: {"reason": "stop"}}
	for _, c := range []struct {
		name         string
		p            Policy
		snaps        []Snapshot
		keep, forget string
	}{
		{"no rule keeps all", Policy{}, snaps(3, day, nil), "s02,s01,s00", ""},
		{"keep last 2", Policy{KeepLast: 2}, snaps(5, day, nil), "s04,s03", "s02,s01,s00"},
		{"keep last more than there are", Policy{KeepLast: 9}, snaps(3, day, nil), "s02,s01,s00", ""},
		// Within 2 days of the newest (s04 at day 4): days 2, 3, 4; the
		// clock does not matter, so an idle workspace keeps its backups.
		{"keep within from the newest", Policy{KeepWithin: Duration(2 * day)}, snaps(5, day, nil), "s04,s03,s02", "s01,s00"},
		{"newest always kept", Policy{KeepTags: []string{"nothing"}}, snaps(3, day, nil), "s02", "s01,s00"},
		{"tag key", Policy{KeepLast: 1, KeepTags: []string{"reason"}}, snaps(5, day, pinned), "s04,s03,s01", "s02,s00"},
		{"tag key=value", Policy{KeepLast: 1, KeepTags: []string{"reason=prebuild"}}, snaps(5, day, pinned), "s04,s01", "s03,s02,s00"},
		{"empty list", Policy{KeepLast: 1}, nil, "", ""},
	} {
		keep, forget := ids(c.p.Apply(c.snaps))
		if keep != c.keep || forget != c.forget {
			t.Errorf("%s: keep %q forget %q, want keep %q forget %q", c.name, keep, forget, c.keep, c.forget)
		}
	}
	// Unreadable tags are kept under a tag rule (they might be pinned),
	// forgotten under the others.
	s := snaps(3, day, nil)
	s[0].TagsKnown = false
	if keep, _ := ids(Policy{KeepLast: 1, KeepTags: []string{"x"}}.Apply(s)); keep != "s02,s00" {
		t.Errorf("unreadable tags under a tag rule: keep %q", keep)
	}
	if _, forget := ids(Policy{KeepLast: 1}.Apply(s)); forget != "s01,s00" {
		t.Errorf("unreadable tags without a tag rule: forget %q", forget)
	}
	// Reasons say why.
	d := Policy{KeepLast: 1, KeepWithin: Duration(day)}.Apply(snaps(2, day, nil))
	if got := strings.Join(d.Keep[0].Reasons, ";"); got != "newest;last 1;within 1d" {
		t.Errorf("reasons %q", got)
	}
}

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{"7d": 7 * 24 * time.Hour, "2w3d": 17 * 24 * time.Hour, "36h": 36 * time.Hour, "1d12h30m": 36*time.Hour + 30*time.Minute, "90s": 90 * time.Second} {
		got, err := ParseDuration(in)
		if err != nil || time.Duration(got) != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, time.Duration(got), err, want)
		}
	}
	for _, in := range []string{"", "d", "7", "7y", "-1d", "99999999999999999999d"} {
		if _, err := ParseDuration(in); err == nil {
			t.Errorf("ParseDuration(%q) accepted", in)
		}
	}
	if s := Duration(14 * 24 * time.Hour).String(); s != "14d" {
		t.Errorf("String = %q", s)
	}
	if err := (Policy{KeepTags: []string{"=x"}}).Validate(); err == nil {
		t.Error("a tag rule without a key validated")
	}
}
