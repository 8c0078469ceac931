package repo

import (
	"bytes"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/backupd/backupd/pkg/chunk"
)

// allocated returns how many bytes f allocates (TotalAlloc is cumulative:
// a collection in between hides nothing).
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

func sampleTree() *Tree {
	return &Tree{Nodes: []Node{
		{Name: "a.go", Type: TypeFile, Mode: 0o644, MTime: 1700000000123456789, Size: 3, Content: []chunk.ID{chunk.Hash([]byte("abc"))}, Inode: 1234567, CTime: 1700000000987654321, UID: 33333, GID: 33334, Device: 2049, Nlink: 3},
		{Name: "empty", Type: TypeFile, Mode: 0o600, MTime: -5},
		{Name: "link", Type: TypeSymlink, Mode: 0o777, Target: "../x"},
		{Name: "sub", Type: TypeDir, Mode: 0o4755, MTime: 1, Subtree: chunk.Hash([]byte("t")), Xattrs: []Xattr{{"security.selinux", []byte("ctx")}, {"user.a", nil}, {"user.b", []byte{0, 1}}}},
		{Name: "\xff\xfe odd name", Type: TypeFile},
	}}
}

func TestTreeRoundTrip(t *testing.T) {
	tr := sampleTree()
	enc := EncodeTree(tr)
	got, err := DecodeTree(enc)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(EncodeTree(got), enc) {
		t.Fatal("re-encoding differs: encoding not canonical")
	}
	if x := got.Nodes[3].Xattrs; len(x) != 3 || x[2].Name != "user.b" || !bytes.Equal(x[2].Value, []byte{0, 1}) {
		t.Fatalf("xattrs = %+v", x)
	}
	if got.Nodes[0].MTime != tr.Nodes[0].MTime || got.Nodes[0].Inode != 1234567 || got.Nodes[0].CTime != 1700000000987654321 || got.Nodes[0].UID != 33333 || got.Nodes[0].Nlink != 3 || got.Nodes[0].Device != 2049 || got.Nodes[0].GID != 33334 || got.Nodes[3].Mode != 0o4755 || got.Nodes[2].Target != "../x" || got.Nodes[4].Name != "\xff\xfe odd name" {
		t.Fatalf("fields lost: %+v", got.Nodes)
	}
}

func TestDecodeTreeRefusesHostileTrees(t *testing.T) {
	mk := func(nodes ...Node) []byte {
		// Encode without EncodeTree's ordering check.
		var b []byte
		for i := range nodes {
			one := EncodeTree(&Tree{Nodes: nodes[i : i+1]})
			b = append(b, one[len(treeMagic)+1:]...)
		}
		return append(append([]byte(treeMagic), byte(len(nodes))), b...)
	}
	sub := chunk.Hash([]byte("x"))
	cases := map[string][]byte{
		"dotdot":      mk(Node{Name: "..", Type: TypeDir, Subtree: sub}),
		"dot":         mk(Node{Name: ".", Type: TypeDir, Subtree: sub}),
		"slash":       mk(Node{Name: "a/../../etc", Type: TypeFile}),
		"absolute":    mk(Node{Name: "/etc/passwd", Type: TypeFile}),
		"empty name":  mk(Node{Name: "", Type: TypeFile}),
		"nul":         mk(Node{Name: "a\x00b", Type: TypeFile}),
		"duplicate":   mk(Node{Name: "a", Type: TypeSymlink, Target: "/etc"}, Node{Name: "a", Type: TypeDir, Subtree: sub}),
		"unsorted":    mk(Node{Name: "b", Type: TypeFile}, Node{Name: "a", Type: TypeFile}),
		"bad type":    mk(Node{Name: "a", Type: 9}),
		"dir no tree": append(append([]byte(treeMagic), 1), 1, 1, 'a', 2, 2, 0),
		"truncated":   EncodeTree(sampleTree())[:40],
		"trailing":    append(EncodeTree(sampleTree()), 0),
		"unknown tag": append(append([]byte(treeMagic), 1), 1, 1, 'a', 2, 1, 42, 0, 0),
		"dir inode":   append(append([]byte(treeMagic), 1), append(append([]byte{1, 1, 'a', 2, 2, 7}, make([]byte, 32)...), 9, 5, 0)...),
		"no magic":    []byte("nope"),
		"xattr order": append(append([]byte(treeMagic), 1), 1, 1, 'a', 2, 1, 13, 2, 1, 'b', 0, 1, 'a', 0, 0),
		"xattr nul":   append(append([]byte(treeMagic), 1), 1, 1, 'a', 2, 1, 13, 1, 2, 'a', 0, 0, 0),
	}
	for name, b := range cases {
		if _, err := DecodeTree(b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: DecodeTree = %v, want ErrCorrupt", name, err)
		}
	}
}

func FuzzDecodeTree(f *testing.F) {
	f.Add(EncodeTree(sampleTree()))
	f.Fuzz(func(t *testing.T, b []byte) {
		tr, err := DecodeTree(b)
		if err != nil {
			return
		}
		for _, n := range tr.Nodes {
			if ValidName(n.Name) != nil {
				t.Fatalf("accepted forbidden name %q", n.Name)
			}
		}
		if !bytes.Equal(EncodeTree(tr), b) {
			t.Fatal("accepted a non-canonical encoding")
		}
	})
}

func TestPackAndIndexRoundTrip(t *testing.T) {
	pb := NewPackBuilder(1 << 10)
	var ids []chunk.ID
	codec, err := chunk.NewCodec(1)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"one", "two", strings.Repeat("three", 100)} {
		id := chunk.Hash([]byte(s))
		ids = append(ids, id)
		stored, comp := codec.Compress(nil, []byte(s))
		pb.Add(id, DataBlob, comp, stored, len(s))
	}
	data, packID, entries := pb.Finish()
	if packID != chunk.Hash(data) {
		t.Fatal("pack id is not the hash of the pack")
	}
	got, err := ParsePackTrailer(data, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[2].Offset != 6 || got[2].Compression != chunk.Zstd || got[2].StoredLen >= 500 || got[2].RawLen != 500 || got[1].ID != ids[1] {
		t.Fatalf("trailer = %+v", got)
	}
	tail := data[len(data)-PackTrailerReadSize(3):]
	if _, err := ParsePackTrailer(tail, int64(len(data))); err != nil {
		t.Fatalf("parse from tail only: %v", err)
	}
	bad := bytes.Clone(data)
	bad[len(bad)-1] ^= 1
	if _, err := ParsePackTrailer(bad, int64(len(bad))); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("damaged magic: %v", err)
	}
	if _, err := ParsePackTrailer(data, int64(len(data))+1); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("wrong size: %v", err)
	}

	obj := EncodeIndex([]PackIndex{{Pack: packID, Blobs: entries}})
	packs, err := DecodeIndex(obj)
	if err != nil {
		t.Fatal(err)
	}
	if len(packs) != 1 || packs[0].Pack != packID || len(packs[0].Blobs) != 3 || packs[0].Blobs[2] != entries[2] {
		t.Fatalf("index = %+v", packs)
	}
	x := NewIndex()
	x.AddPack(packs[0].Pack, packs[0].Blobs)
	loc, ok := x.Lookup(ids[2])
	if !ok || loc.Pack != packID || loc.Offset != 6 || !x.Has(ids[0]) || x.Has(chunk.Hash(nil)) {
		t.Fatalf("lookup = %+v, %v", loc, ok)
	}
	if _, err := DecodeIndex(obj[:len(obj)-3]); err == nil {
		t.Fatal("truncated index accepted")
	}
}

func TestConfigAndNames(t *testing.T) {
	c, err := NewConfig(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := encodeConfig(c)
	got, err := decodeConfig(b)
	if err != nil || got.Polynomial != c.Polynomial || got.PackSize != DefaultPackSize {
		t.Fatalf("config round trip: %+v, %v", got, err)
	}
	c.Version = 99
	if c.Validate() == nil {
		t.Fatal("future version accepted")
	}
	for _, ok := range []string{"o", "owner-1", "ws_2.x", "A0"} {
		if ValidateName("owner", ok) != nil {
			t.Errorf("%q refused", ok)
		}
	}
	for _, bad := range []string{"", "-x", ".x", "a/b", "..", "a b", string(make([]byte, 200))} {
		if ValidateName("owner", bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestSnapshotKey(t *testing.T) {
	s := &Snapshot{Workspace: "ws", Time: time.Now()}
	id := chunk.Hash([]byte("s"))
	key := snapshotKey("ws", s.Time, id)
	ref, err := parseSnapshotKey(key)
	if err != nil || ref.ID != id || ref.Workspace != "ws" {
		t.Fatalf("%s: %+v %v", key, ref, err)
	}
}
