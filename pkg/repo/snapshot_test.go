package repo

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/backupd/backupd/pkg/chunk"
)

func sampleSnapshot() *Snapshot {
	return &Snapshot{
		Version: SnapshotVersion, Time: time.Date(2026, 11, 23, 11, 30, 0, 123456789, time.UTC),
		Tree: chunk.Hash([]byte("root")), Owner: "o-123", Workspace: "amber-dog-42", Host: "node-7", Path: "/workspace",
		Parent: chunk.Hash([]byte("parent")).String(), Tags: map[string]string{"reason": "stop", "k": ""},
		RootMode: 0o755, RootMTime: 1763897400123456789, RootUID: 33333, RootGID: 33333,
		Stats: Stats{Files: 1, Dirs: 1, Bytes: 4, NewBytes: 4, StoredBytes: 13, Blobs: 2, NewBlobs: 2, ObjectsWritten: 3, DurationMS: 12},
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	b, err := encodeSnapshot(sampleSnapshot())
	if err != nil {
		t.Fatal(err)
	}
	s, err := decodeSnapshot(b)
	if err != nil {
		t.Fatal(err)
	}
	if b2, _ := encodeSnapshot(s); !bytes.Equal(b, b2) {
		t.Fatalf("round trip differs:\n%s\n%s", b, b2)
	}
	if s.Tags["reason"] != "stop" || len(s.Tags) != 2 || s.Parent != sampleSnapshot().Parent {
		t.Fatalf("decoded %+v", s)
	}
	min := &Snapshot{Version: 1, Time: time.Unix(0, 1), Tree: chunk.Hash(nil), Owner: "o", Workspace: "w"}
	b, err = encodeSnapshot(min)
	if err != nil {
		t.Fatal(err)
	}
	if s, err := decodeSnapshot(b); err != nil || s.Tags != nil {
		t.Fatalf("minimal snapshot: %+v, %v", s, err)
	}
}

// hostileSnapshots are snapshot objects a reader must refuse (ErrCorrupt).
func hostileSnapshots() map[string][]byte {
	good, _ := encodeSnapshot(sampleSnapshot())
	edit := func(f func(s *Snapshot)) []byte {
		s := sampleSnapshot()
		f(s)
		b, err := jsonMarshal(s)
		if err != nil {
			panic(err)
		}
		return b
	}
	manyTags := map[string]string{}
	for i := range MaxTags + 1 {
		manyTags[fmt.Sprint("k", i)] = "v"
	}
	return map[string][]byte{
		"not json":                 []byte("{"),
		"not an object":            []byte("[1,2]"),
		"too large":                append(bytes.Clone(good[:len(good)-1]), []byte(`,"pad":"`+strings.Repeat("x", MaxSnapshotSize)+`"}`)...),
		"bad owner":                edit(func(s *Snapshot) { s.Owner = "../x" }),
		"no workspace":             edit(func(s *Snapshot) { s.Workspace = "" }),
		"zero time":                edit(func(s *Snapshot) { s.Time = time.Time{} }),
		"before 1970":              edit(func(s *Snapshot) { s.Time = time.Unix(-1, 0) }),
		"after 2262":               edit(func(s *Snapshot) { s.Time = time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC) }),
		"no tree":                  edit(func(s *Snapshot) { s.Tree = chunk.ID{} }),
		"bad parent":               edit(func(s *Snapshot) { s.Parent = "abc" }),
		"long host":                edit(func(s *Snapshot) { s.Host = strings.Repeat("h", MaxHostLen+1) }),
		"long path":                edit(func(s *Snapshot) { s.Path = strings.Repeat("p", MaxPathLen+1) }),
		"root mode":                edit(func(s *Snapshot) { s.RootMode = 0o40755 }),
		"too many tags":            edit(func(s *Snapshot) { s.Tags = manyTags }),
		"empty tag key":            edit(func(s *Snapshot) { s.Tags = map[string]string{"": "v"} }),
		"tag key with =":           edit(func(s *Snapshot) { s.Tags = map[string]string{"a=b": "v"} }),
		"long tag key":             edit(func(s *Snapshot) { s.Tags = map[string]string{strings.Repeat("k", MaxTagKeyLen+1): "v"} }),
		"long tag value":           edit(func(s *Snapshot) { s.Tags = map[string]string{"k": strings.Repeat("v", MaxTagValueLen+1)} }),
		"duplicate tag":            []byte(strings.Replace(string(good), `"tags":{`, `"tags":{"k":"1",`, 1)),
		"tags not an object":       []byte(strings.Replace(string(good), `"tags":{`, `"tags":[],"x":{`, 1)),
		"tag value a number":       []byte(strings.Replace(string(good), `"tags":{`, `"tags":{"n":1,`, 1)),
		"tree not hex":             []byte(strings.Replace(string(good), `"tree":"`, `"tree":"zz`, 1)),
		"100k tags in 1 MiB":       tagBomb(100_000),
		"100k unreadable in 1 MiB": unreadableBomb(100_000),
		"unreadable not a list":    []byte(strings.Replace(string(good), `"tags":{`, `"unreadable":{},"tags":{`, 1)),
		"unreadable, none counted": edit(func(s *Snapshot) {
			s.Unreadable = []UnreadableEntry{{Path: "a", Reason: "open: permission denied"}}
			s.Stats.Unreadable = 0
		}),
		"unreadable empty path":  edit(func(s *Snapshot) { s.Unreadable, s.Stats.Unreadable = []UnreadableEntry{{Reason: "x"}}, 1 }),
		"unreadable NUL in path": edit(func(s *Snapshot) { s.Unreadable, s.Stats.Unreadable = []UnreadableEntry{{Path: "a\x00b"}}, 1 }),
		"unreadable long path": edit(func(s *Snapshot) {
			s.Unreadable, s.Stats.Unreadable = []UnreadableEntry{{Path: strings.Repeat("p", MaxPathLen+1)}}, 1
		}),
		"unreadable long reason": edit(func(s *Snapshot) {
			s.Unreadable, s.Stats.Unreadable = []UnreadableEntry{{Path: "a", Reason: strings.Repeat("r", MaxUnreadableReasonLen+1)}}, 1
		}),
		"unreadable too many bytes": edit(func(s *Snapshot) {
			for i := range 17 {
				s.Unreadable = append(s.Unreadable, UnreadableEntry{Path: fmt.Sprint(i, strings.Repeat("p", 4000))})
			}
			s.Stats.Unreadable = 17
		}),
		"nesting in unknowns": []byte(`{"version":1,"x":` + strings.Repeat("[", 100_000) + strings.Repeat("]", 100_000) + `}`),
	}
}

// unreadableBomb is a snapshot object listing n tiny unreadable entries.
func unreadableBomb(n int) []byte {
	var b strings.Builder
	b.WriteString(`{"version":1,"owner":"o","workspace":"w","time":"2026-01-01T00:00:00Z","tree":"` + chunk.Hash(nil).String() + `","unreadable":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"path":"a"}`)
	}
	fmt.Fprintf(&b, `],"stats":{"unreadable":%d}}`, n)
	return []byte(b.String())
}

// A snapshot with every field at its limit, of bytes JSON escapes (6
// bytes each), still fits MaxSnapshotSize; its unreadable entries round
// trip.
func TestSnapshotAtLimits(t *testing.T) {
	esc := func(n int) string { return strings.Repeat("<", n) }
	s := sampleSnapshot()
	s.Host, s.Path = esc(MaxHostLen), esc(MaxPathLen)
	s.Tags = map[string]string{}
	for i := range MaxTags {
		k := fmt.Sprintf("%03d", i)
		s.Tags[k+esc(MaxTagKeyLen-len(k))] = esc(MaxTagValueLen)
	}
	per := MaxUnreadableBytes / MaxUnreadable
	for i := range MaxUnreadable {
		p := fmt.Sprintf("%04d/", i)
		s.Unreadable = append(s.Unreadable, UnreadableEntry{Path: p + esc(per-len(p)-16), Reason: "\x01" + esc(15)})
	}
	s.Stats.Unreadable = 1 << 40
	b, err := encodeSnapshot(s)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("snapshot at the limits: %d bytes", len(b))
	got, err := decodeSnapshot(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Unreadable) != MaxUnreadable || got.Unreadable[7] != s.Unreadable[7] || got.Stats.Unreadable != 1<<40 {
		t.Fatalf("decoded %d unreadable entries, [7] %+v, count %d", len(got.Unreadable), got.Unreadable[7], got.Stats.Unreadable)
	}
	s.Unreadable = append(s.Unreadable, UnreadableEntry{Path: "one more"})
	if _, err := encodeSnapshot(s); err == nil {
		t.Fatalf("encodeSnapshot wrote %d unreadable entries", len(s.Unreadable))
	}
}

// tagBomb is a snapshot object of n tiny tags.
func tagBomb(n int) []byte {
	var b strings.Builder
	b.WriteString(`{"version":1,"owner":"o","workspace":"w","time":"2026-01-01T00:00:00Z","tree":"` + chunk.Hash(nil).String() + `","tags":{`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"%x":""`, i)
	}
	b.WriteString("}}")
	return []byte(b.String())
}

func TestDecodeSnapshotRefuses(t *testing.T) {
	for name, b := range hostileSnapshots() {
		var err error
		n := allocated(func() { _, err = decodeSnapshot(b) })
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: decodeSnapshot = %v, want ErrCorrupt", name, err)
		}
		if n > 4*uint64(len(b))+64<<10 {
			t.Errorf("%s: %d bytes allocated %d", name, len(b), n)
		}
	}
	b, _ := jsonMarshal(&Snapshot{Version: 2})
	if _, err := decodeSnapshot(b); !errors.Is(err, ErrVersion) || errors.Is(err, ErrCorrupt) {
		t.Errorf("version 2: %v, want ErrVersion", err)
	}
	// The writer refuses what the reader would.
	s := sampleSnapshot()
	s.Tags = map[string]string{"": "x"}
	if _, err := encodeSnapshot(s); err == nil {
		t.Error("encodeSnapshot wrote an empty tag key")
	}
}

func FuzzDecodeSnapshot(f *testing.F) {
	good, _ := encodeSnapshot(sampleSnapshot())
	f.Add(good)
	min, _ := encodeSnapshot(&Snapshot{Version: 1, Time: time.Unix(0, 1), Tree: chunk.Hash(nil), Owner: "o", Workspace: "w"})
	f.Add(min)
	f.Add(good[:len(good)/2])
	for name, b := range hostileSnapshots() {
		if len(b) < 4096 && name != "nesting in unknowns" {
			f.Add(b)
		}
	}
	f.Add(tagBomb(MaxTags))
	f.Add(tagBomb(MaxTags + 1))
	f.Add(unreadableBomb(MaxUnreadable))
	f.Add(unreadableBomb(MaxUnreadable + 1))
	f.Fuzz(func(t *testing.T, b []byte) {
		var s *Snapshot
		var err error
		n := allocated(func() { s, err = decodeSnapshot(b) })
		if n > 8*uint64(len(b))+64<<10 {
			t.Fatalf("decoding %d bytes allocated %d", len(b), n)
		}
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) {
				t.Fatalf("error wraps neither ErrCorrupt nor ErrVersion: %v", err)
			}
			return
		}
		if err := s.Validate(); err != nil {
			t.Fatalf("accepted a snapshot Validate refuses: %v", err)
		}
		enc, err := encodeSnapshot(s)
		if err != nil {
			t.Fatalf("accepted a snapshot encodeSnapshot refuses: %v", err)
		}
		s2, err := decodeSnapshot(enc)
		if err != nil {
			t.Fatalf("re-encoded snapshot refused: %v", err)
		}
		if enc2, _ := encodeSnapshot(s2); !bytes.Equal(enc, enc2) {
			t.Fatalf("snapshot changes on a second round trip:\n%s\n%s", enc, enc2)
		}
	})
}

// jsonMarshal encodes a snapshot without encodeSnapshot's checks, as a
// crafted object would be.
func jsonMarshal(s *Snapshot) ([]byte, error) { return json.Marshal(s) }
