// Package retention decides which snapshots of one workspace to keep: a
// pure function of the workspace's snapshot list and a policy, with no
// storage behind it. Forgetting what it does not keep is the caller's
// (pkg/repo); the data of forgotten snapshots goes at the next prune.
package retention

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Policy says which snapshots of one workspace to keep; a snapshot any
// rule keeps is kept. The workspace's newest snapshot is always kept. A
// policy without any rule keeps everything.
type Policy struct {
	// KeepLast keeps the newest KeepLast snapshots (0: no such rule).
	KeepLast int `yaml:"keep_last" json:"keep_last,omitempty"`
	// KeepWithin keeps the snapshots taken within this long before the
	// workspace's newest snapshot (not before now: an idle workspace keeps
	// its backups). 0: no such rule.
	KeepWithin Duration `yaml:"keep_within" json:"keep_within,omitempty"`
	// KeepTags keeps the snapshots with one of these tags: "key" (any
	// value) or "key=value".
	KeepTags []string `yaml:"keep_tags" json:"keep_tags,omitempty"`
}

// Empty reports whether the policy has no rule (and so keeps everything).
func (p Policy) Empty() bool { return p.KeepLast == 0 && p.KeepWithin == 0 && len(p.KeepTags) == 0 }

// Validate checks the policy's values.
func (p Policy) Validate() error {
	if p.KeepLast < 0 {
		return fmt.Errorf("keep_last %d: want 0 (no rule) or more", p.KeepLast)
	}
	if p.KeepWithin < 0 {
		return fmt.Errorf("keep_within %v: want 0 (no rule) or more", time.Duration(p.KeepWithin))
	}
	for _, t := range p.KeepTags {
		if k, _, _ := strings.Cut(t, "="); k == "" {
			return fmt.Errorf("keep_tags %q: want KEY or KEY=VALUE", t)
		}
	}
	return nil
}

// Snapshot is what a decision needs to know of one snapshot.
type Snapshot struct {
	ID   string
	Time time.Time
	// Tags are the snapshot's tags; TagsKnown is false when the snapshot
	// object could not be read, and such a snapshot is kept whenever the
	// policy has a tag rule (it might carry a pinned tag).
	Tags      map[string]string
	TagsKnown bool
}

// Decision is what a policy makes of a snapshot list, newest first in
// both lists.
type Decision struct {
	Keep   []Kept
	Forget []Snapshot
}

// Kept is a kept snapshot with the rules that keep it.
type Kept struct {
	Snapshot
	Reasons []string
}

// Apply decides which snapshots to keep. It does not modify snaps.
func (p Policy) Apply(snaps []Snapshot) Decision {
	sorted := append([]Snapshot(nil), snaps...)
	sort.SliceStable(sorted, func(i, j int) bool {
		if !sorted[i].Time.Equal(sorted[j].Time) {
			return sorted[i].Time.After(sorted[j].Time)
		}
		return sorted[i].ID > sorted[j].ID
	})
	var d Decision
	if len(sorted) == 0 {
		return d
	}
	newest := sorted[0].Time
	for i, s := range sorted {
		var why []string
		if p.Empty() {
			why = append(why, "no retention rule")
		}
		if i == 0 {
			why = append(why, "newest")
		}
		if p.KeepLast > 0 && i < p.KeepLast {
			why = append(why, fmt.Sprintf("last %d", p.KeepLast))
		}
		if p.KeepWithin > 0 && !s.Time.Before(newest.Add(-time.Duration(p.KeepWithin))) {
			why = append(why, "within "+p.KeepWithin.String())
		}
		if t := p.pinned(s); t != "" {
			why = append(why, t)
		}
		if len(why) > 0 {
			d.Keep = append(d.Keep, Kept{Snapshot: s, Reasons: why})
		} else {
			d.Forget = append(d.Forget, s)
		}
	}
	return d
}

// pinned returns the tag rule that keeps s, or "".
func (p Policy) pinned(s Snapshot) string {
	for _, rule := range p.KeepTags {
		if !s.TagsKnown {
			return "tags unreadable, kept for tag rules"
		}
		k, v, hasValue := strings.Cut(rule, "=")
		got, ok := s.Tags[k]
		if ok && (!hasValue || got == v) {
			return "tag " + rule
		}
	}
	return ""
}

// Duration is a time.Duration that also reads days and weeks ("7d",
// "2w3d12h"), as retention periods are usually given, and prints the same
// way.
type Duration time.Duration

// ParseDuration reads a duration: Go's syntax ("36h", "90m") with the
// units d (24h) and w (7d) too.
func ParseDuration(s string) (Duration, error) {
	if s == "" {
		return 0, errors.New("empty duration")
	}
	var total time.Duration
	rest := s
	for rest != "" {
		i := 0
		for i < len(rest) && (rest[i] >= '0' && rest[i] <= '9') {
			i++
		}
		j := i
		for j < len(rest) && !(rest[j] >= '0' && rest[j] <= '9') {
			j++
		}
		if i == 0 || j == i {
			return 0, fmt.Errorf("duration %q: want a number and a unit (d, w, h, m, s), e.g. 7d or 36h", s)
		}
		n, err := strconv.ParseInt(rest[:i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("duration %q: %v", s, err)
		}
		var unit time.Duration
		switch rest[i:j] {
		case "w":
			unit = 7 * 24 * time.Hour
		case "d":
			unit = 24 * time.Hour
		default:
			u, err := time.ParseDuration("1" + rest[i:j])
			if err != nil {
				return 0, fmt.Errorf("duration %q: unknown unit %q (want d, w, h, m, s)", s, rest[i:j])
			}
			unit = u
		}
		if n > int64(1<<62)/int64(unit) {
			return 0, fmt.Errorf("duration %q: too long", s)
		}
		total += time.Duration(n) * unit
		rest = rest[j:]
	}
	return Duration(total), nil
}

func (d Duration) String() string {
	t := time.Duration(d)
	if t != 0 && t%(24*time.Hour) == 0 {
		return strconv.FormatInt(int64(t/(24*time.Hour)), 10) + "d"
	}
	return t.String()
}

// UnmarshalText reads a Duration from YAML or JSON text.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// MarshalText writes a Duration as text.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }
