package repo

import (
	"bytes"
	"encoding/binary"
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
		{Name: "a.go", Type: TypeFile, Mode: 0o644, MTime: 1700000000123456789, Size: 3, Content: []chunk.ID{chunk.Hash([]byte("abc"))}, Inode: 1234567, CTime: 1700000000987654321, UID: 33333, GID: 33334, Device: 2049, Nlink: 3, Flags: NodeChanging},
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
	if got.Nodes[0].MTime != tr.Nodes[0].MTime || got.Nodes[0].Inode != 1234567 || got.Nodes[0].CTime != 1700000000987654321 || got.Nodes[0].UID != 33333 || got.Nodes[0].Nlink != 3 || got.Nodes[0].Device != 2049 || got.Nodes[0].Flags != NodeChanging || got.Nodes[4].Flags != 0 || got.Nodes[0].GID != 33334 || got.Nodes[3].Mode != 0o4755 || got.Nodes[2].Target != "../x" || got.Nodes[4].Name != "\xff\xfe odd name" {
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

// treeOf returns the magic, a node count and the given node encodings:
// trees that EncodeTree would not write.
// nameOf returns the i-th of the names of width bytes, in sorted order,
// none holding NUL or '/'.
func nameOf(i, width int) string {
	b := make([]byte, width)
	for j := width - 1; j >= 0; j-- {
		d := byte(i%254) + 1
		if d >= '/' {
			d++
		}
		b[j], i = d, i/254
	}
	return string(b)
}

func treeOf(count uint64, nodes ...[]byte) []byte {
	b := binary.AppendUvarint([]byte(treeMagic), count)
	for _, n := range nodes {
		b = append(b, n...)
	}
	return b
}

// nonCanonicalTrees are encodings that the decoder before this one accepted
// (or could be made to) although EncodeTree never writes them.
func nonCanonicalTrees() map[string][]byte {
	sub := make([]byte, 32)
	return map[string][]byte{
		"overlong count":          treeOf(0)[:len(treeMagic)],
		"overlong count 0":        append([]byte(treeMagic), 0x80, 0x00),
		"overlong type":           treeOf(1, []byte{1, 1, 'a', 2, 0x81, 0x00, 0}),
		"type 257 truncated to 1": treeOf(1, []byte{1, 1, 'a', 2, 0x81, 0x02, 0}),
		"overlong tag":            treeOf(1, []byte{0x81, 0x00, 1, 'a', 2, 1, 0}),
		"overlong name length":    treeOf(1, []byte{1, 0x81, 0x00, 'a', 2, 1, 0}),
		"overlong mtime":          treeOf(1, []byte{1, 1, 'a', 2, 1, 4, 0x82, 0x00, 0}),
		"overlong end mark":       treeOf(1, []byte{1, 1, 'a', 2, 1, 0x80, 0x00}),
		"mode 0":                  treeOf(1, []byte{1, 1, 'a', 2, 1, 3, 0, 0}),
		"mtime 0":                 treeOf(1, []byte{1, 1, 'a', 2, 1, 4, 0, 0}),
		"size 0":                  treeOf(1, []byte{1, 1, 'a', 2, 1, 5, 0, 0}),
		"empty content list":      treeOf(1, []byte{1, 1, 'a', 2, 1, 6, 0, 0}),
		"size without content":    treeOf(1, []byte{1, 1, 'a', 2, 1, 5, 3, 0}),
		"content without size":    treeOf(1, append(append([]byte{1, 1, 'a', 2, 1, 6, 1}, sub...), 0)),
		"inode 0":                 treeOf(1, []byte{1, 1, 'a', 2, 1, 9, 0, 0}),
		"ctime 0":                 treeOf(1, []byte{1, 1, 'a', 2, 1, 10, 0, 0}),
		"uid 0":                   treeOf(1, []byte{1, 1, 'a', 2, 1, 11, 0, 0}),
		"gid 0":                   treeOf(1, []byte{1, 1, 'a', 2, 1, 12, 0, 0}),
		"no xattrs":               treeOf(1, []byte{1, 1, 'a', 2, 1, 13, 0, 0}),
		"device 0":                treeOf(1, []byte{1, 1, 'a', 2, 1, 14, 0, 0}),
		"nlink 0":                 treeOf(1, []byte{1, 1, 'a', 2, 1, 15, 0, 0}),
		"flags 0":                 treeOf(1, []byte{1, 1, 'a', 2, 1, 16, 0, 0}),
		"unknown flag":            treeOf(1, []byte{1, 1, 'a', 2, 1, 16, 2, 0}),
		"symlink flags":           treeOf(1, []byte{1, 1, 'a', 2, 3, 8, 1, 'x', 16, 1, 0}),
		"symlink size":            treeOf(1, []byte{1, 1, 'a', 2, 3, 5, 1, 8, 1, 'x', 0}),
		"fifo device":             treeOf(1, []byte{1, 1, 'a', 2, 4, 14, 1, 0}),
		"dir nlink":               treeOf(1, append(append([]byte{1, 1, 'a', 2, 2, 7}, sub...), 15, 2, 0)),
		"empty symlink target":    treeOf(1, []byte{1, 1, 'a', 2, 3, 8, 0, 0}),
		"no type":                 treeOf(1, []byte{1, 1, 'a', 0}),
		"no name":                 treeOf(1, []byte{2, 1, 0}),
		"empty node":              treeOf(1, []byte{0}),
	}
}

func TestDecodeTreeRefusesNonCanonical(t *testing.T) {
	for name, b := range nonCanonicalTrees() {
		if _, err := DecodeTree(b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: DecodeTree = %v, want ErrCorrupt", name, err)
		}
	}
}

func TestTreeLimits(t *testing.T) {
	long := strings.Repeat("n", MaxNameLen)
	ok := &Tree{Nodes: []Node{
		{Name: long, Type: TypeSymlink, Target: strings.Repeat("t", MaxTargetLen)},
		{Name: "x", Type: TypeFile, Xattrs: []Xattr{{Name: "user." + strings.Repeat("a", MaxXattrNameLen-5), Value: make([]byte, MaxXattrValueLen)}}},
	}}
	b, err := EncodeTreeChecked(ok)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeTree(b); err != nil {
		t.Fatalf("tree at the limits refused: %v", err)
	}
	manyXattrs := make([]Xattr, 0, 330)
	for i := range 330 {
		manyXattrs = append(manyXattrs, Xattr{Name: "user." + strings.Repeat("x", 200) + nameOf(i, 2)})
	}
	bad := map[string]Node{
		"long name":      {Name: long + "n", Type: TypeFile},
		"long target":    {Name: "a", Type: TypeSymlink, Target: strings.Repeat("t", MaxTargetLen+1)},
		"empty target":   {Name: "a", Type: TypeSymlink},
		"long xattr":     {Name: "a", Type: TypeFile, Xattrs: []Xattr{{Name: strings.Repeat("a", MaxXattrNameLen+1)}}},
		"big value":      {Name: "a", Type: TypeFile, Xattrs: []Xattr{{Name: "user.a", Value: make([]byte, MaxXattrValueLen+1)}}},
		"xattr list":     {Name: "a", Type: TypeFile, Xattrs: manyXattrs},
		"dir device":     {Name: "a", Type: TypeDir, Device: 1},
		"bad mode":       {Name: "a", Type: TypeFile, Mode: 0o10644},
		"size, no blobs": {Name: "a", Type: TypeFile, Size: 1},
		"unknown type":   {Name: "a", Type: 5},
	}
	for name, n := range bad {
		tr := &Tree{Nodes: []Node{n}}
		if err := tr.Validate(); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: Validate = %v", name, err)
		}
		if _, err := DecodeTree(EncodeTree(tr)); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: DecodeTree = %v", name, err)
		}
	}
	// Too many entries, too many xattrs, too many bytes.
	big := &Tree{Nodes: make([]Node, MaxTreeNodes+1)}
	for i := range big.Nodes {
		big.Nodes[i] = Node{Name: nameOf(i, 3), Type: TypeFIFO}
	}
	if _, err := EncodeTreeChecked(big); !errors.Is(err, ErrCorrupt) {
		t.Errorf("%d entries: %v", len(big.Nodes), err)
	}
	if _, err := DecodeTree(EncodeTree(big)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("%d entries decoded: %v", len(big.Nodes), err)
	}
	big.Nodes = big.Nodes[:MaxTreeNodes]
	if b, err := EncodeTreeChecked(big); err != nil {
		t.Errorf("%d entries: %v", len(big.Nodes), err)
	} else if _, err := DecodeTree(b); err != nil {
		t.Errorf("%d entries decoded: %v", len(big.Nodes), err)
	}
	for i := range big.Nodes {
		big.Nodes[i].Xattrs = []Xattr{{Name: "user.a"}, {Name: "user.b"}}
	}
	if _, err := EncodeTreeChecked(big); !errors.Is(err, ErrCorrupt) {
		t.Errorf("%d xattrs: %v", 2*len(big.Nodes), err)
	}
	if _, err := DecodeTree(EncodeTree(big)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("%d xattrs decoded: %v", 2*len(big.Nodes), err)
	}
	huge := &Tree{Nodes: []Node{{Name: "f", Type: TypeFile, Size: 1 << 40, Content: make([]chunk.ID, MaxFileBlobs)}}}
	if _, err := EncodeTreeChecked(huge); !errors.Is(err, ErrCorrupt) {
		t.Errorf("tree above MaxTreeSize: %v", err)
	}
	if _, err := DecodeTree(EncodeTree(huge)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("tree above MaxTreeSize decoded: %v", err)
	}
}

// worstTrees are trees at the limits that cost a decoder the most memory
// per byte: the most entries of the smallest kind, the most xattrs, the
// largest content list, long names.
func worstTrees() map[string]*Tree {
	tiny := &Tree{Nodes: make([]Node, MaxTreeNodes)}
	xattrs := &Tree{Nodes: make([]Node, MaxTreeNodes/4)}
	names := &Tree{}
	for i := range tiny.Nodes {
		name := nameOf(i, 3)
		tiny.Nodes[i] = Node{Name: name, Type: TypeFIFO}
		if i < len(xattrs.Nodes) {
			xattrs.Nodes[i] = Node{Name: name, Type: TypeFIFO, Xattrs: []Xattr{{Name: "a"}, {Name: "b"}, {Name: "c"}, {Name: "d"}}}
		}
	}
	for i := 0; len(names.Nodes) < MaxTreeSize/(MaxNameLen+8); i++ {
		names.Nodes = append(names.Nodes, Node{Name: nameOf(i, 3) + strings.Repeat("n", MaxNameLen-3), Type: TypeFIFO})
	}
	content := &Tree{Nodes: []Node{{Name: "f", Type: TypeFile, Size: 1 << 40, Content: make([]chunk.ID, MaxFileBlobs-10)}}}
	// All at once: the most entries, each with an xattr, and one file
	// whose content list fills the rest of MaxTreeSize.
	all := &Tree{Nodes: make([]Node, MaxTreeNodes)}
	for i := range all.Nodes {
		all.Nodes[i] = Node{Name: nameOf(i, 3), Type: TypeFIFO, Xattrs: []Xattr{{Name: "a"}}}
	}
	last := &all.Nodes[len(all.Nodes)-1]
	last.Type, last.Size = TypeFile, 1<<40
	last.Content = make([]chunk.ID, (MaxTreeSize-len(EncodeTree(all)))/chunk.IDSize-1)
	return map[string]*Tree{"tiny entries": tiny, "xattrs": xattrs, "long names": names, "content list": content, "all at once": all}
}

func TestDecodeTreeMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("builds trees of MaxTreeNodes entries")
	}
	for name, tr := range worstTrees() {
		b, err := EncodeTreeChecked(tr)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var got *Tree
		n := allocated(func() { got, err = DecodeTree(b) })
		if err != nil || !bytes.Equal(EncodeTree(got), b) {
			t.Fatalf("%s: %v", name, err)
		}
		t.Logf("%s: %d entries, %d bytes encoded, %d bytes decoded", name, len(tr.Nodes), len(b), n)
		if n > 48<<20 {
			t.Errorf("%s: decoding %d bytes allocated %d", name, len(b), n)
		}
	}
	// Counts that claim more than the bytes present allocate nothing.
	for name, b := range map[string][]byte{
		"count 10^8":   treeOf(1e8, []byte{1, 1, 'a', 2, 1, 0}),
		"content 10^8": treeOf(1, []byte{1, 1, 'a', 2, 1, 5, 1, 6, 0x80, 0xc2, 0xd7, 0x2f}),
		"xattrs 10^8":  treeOf(1, []byte{1, 1, 'a', 2, 1, 13, 0x80, 0xc2, 0xd7, 0x2f}),
		"name 10^8":    treeOf(1, []byte{1, 0x80, 0xc2, 0xd7, 0x2f}),
	} {
		var err error
		n := allocated(func() { _, err = DecodeTree(b) })
		if !errors.Is(err, ErrCorrupt) || n > 4<<10 {
			t.Errorf("%s: %v, allocated %d bytes", name, err, n)
		}
	}
}

func BenchmarkDecodeTree(b *testing.B) {
	// A directory of 1000 typical files.
	tr := &Tree{}
	for i := range 1000 {
		tr.Nodes = append(tr.Nodes, Node{Name: "file-" + nameOf(i, 3) + ".go", Type: TypeFile, Mode: 0o644,
			MTime: 1700000000123456789 + int64(i), Size: 4321, Content: []chunk.ID{chunk.Hash([]byte{byte(i), byte(i >> 8)})},
			Inode: 1234567 + uint64(i), CTime: 1700000000987654321, UID: 33333, GID: 33333})
	}
	enc := EncodeTree(tr)
	b.SetBytes(int64(len(enc)))
	b.ReportMetric(float64(len(enc))/float64(len(tr.Nodes)), "B/entry")
	for b.Loop() {
		if _, err := DecodeTree(enc); err != nil {
			b.Fatal(err)
		}
	}
}

func FuzzDecodeTree(f *testing.F) {
	f.Add(EncodeTree(sampleTree()))
	f.Add(EncodeTree(&Tree{}))
	f.Add(EncodeTree(sampleTree())[:40])
	for _, b := range nonCanonicalTrees() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		tr, err := DecodeTree(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
			return
		}
		if err := tr.Validate(); err != nil {
			t.Fatalf("accepted a tree that Validate refuses: %v", err)
		}
		if !bytes.Equal(EncodeTree(tr), b) {
			t.Fatal("accepted a non-canonical encoding")
		}
		if _, err := EncodeTreeChecked(tr); err != nil {
			t.Fatalf("accepted a tree EncodeTreeChecked refuses: %v", err)
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
