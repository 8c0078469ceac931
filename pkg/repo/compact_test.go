package repo

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"slices"
	"testing"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/storage/mem"
)

// compactPack builds groupPack's blobs (a single blob, a group of three,
// another single blob) in a pack with a compact trailer; members, when
// given, replace the group's member list (a crafted pack).
func compactPack(t *testing.T, r *Repository, members func([]GroupMember) []GroupMember) ([]byte, chunk.ID, []BlobEntry) {
	t.Helper()
	pb := NewPackBuilder(1 << 10)
	pb.SetCompactTrailer()
	single := func(s string) {
		raw := bytes.Repeat([]byte(s), 100)
		stored, comp := r.Codec().Compress(nil, raw)
		pb.Add(chunk.Hash(raw), DataBlob, comp, stored, len(raw))
	}
	single("alone ")
	var content []byte
	var ms []GroupMember
	for i := range 3 {
		raw := bytes.Repeat([]byte{'a' + byte(i)}, 200+i)
		content = append(content, raw...)
		ms = append(ms, GroupMember{ID: chunk.Hash(raw), RawLen: uint32(len(raw))})
	}
	if members != nil {
		ms = members(ms)
	}
	pb.AddGroup(DataBlob, r.Codec().CompressFrame(nil, content), ms)
	single("after ")
	return pb.Finish()
}

func TestCompactTrailer(t *testing.T) {
	ctx := context.Background()
	r, err := OpenOrInit(ctx, mem.New())
	if err != nil {
		t.Fatal(err)
	}
	if !r.Config().CompactTrailers() {
		t.Fatalf("a new repository (version %d) does not write compact trailers", r.Config().Version)
	}
	data, id, entries := compactPack(t, r, nil)
	if string(data[len(data)-8:]) != packMagic2 {
		t.Fatalf("magic %q", data[len(data)-8:])
	}
	size := int64(len(data))
	need, err := PackTrailerSize(data[size-PackFooterSize:], size)
	if err != nil {
		t.Fatal(err)
	}
	// The three grouped blobs carry no id: the trailer is at least their
	// three ids shorter than the fixed trailer's 5 x 42 bytes.
	if tl := need - PackFooterSize; tl > int64(5*trailerEntry-3*chunk.IDSize) {
		t.Fatalf("compact trailer of %d bytes", tl)
	}
	parsed, err := ParsePackTrailer(data[size-need:], size)
	if err != nil || len(parsed) != len(entries) {
		t.Fatalf("ParsePackTrailer: %v, %d entries", err, len(parsed))
	}
	for i, e := range parsed {
		want := entries[i]
		if e.Compression == chunk.ZstdGroup {
			if e.ID != (chunk.ID{}) {
				t.Fatalf("entry %d: grouped blob with an id in a compact trailer", i)
			}
			want.ID = chunk.ID{}
		}
		if e != want {
			t.Fatalf("entry %d: %+v, want %+v", i, e, want)
		}
	}
	// Read from storage, the grouped blobs' ids are hashed out of their
	// frame: the entries come back whole, as the index would list them.
	if err := r.SavePack(ctx, data, id, entries); err != nil {
		t.Fatal(err)
	}
	got, err := r.ReadPackTrailer(ctx, id, size)
	if err != nil || !slices.Equal(got, entries) {
		t.Fatalf("ReadPackTrailer: %v\n got %+v\nwant %+v", err, got, entries)
	}
}

func TestCompactTrailerRefuses(t *testing.T) {
	ctx := context.Background()
	r, err := OpenOrInit(ctx, mem.New())
	if err != nil {
		t.Fatal(err)
	}
	// A group whose members do not cover its frame's content.
	data, id, entries := compactPack(t, r, func(ms []GroupMember) []GroupMember { return ms[:2] })
	if err := r.SavePack(ctx, data, id, entries); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReadPackTrailer(ctx, id, int64(len(data))); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("members short of their frame: %v, want ErrCorrupt", err)
	}

	// Overlong and truncated varints, a missing id.
	footer := func(tr []byte) []byte {
		return append(binary.LittleEndian.AppendUint32(tr, uint32(len(tr))), packMagic2...)
	}
	id32 := make([]byte, chunk.IDSize)
	for name, tr := range map[string][]byte{
		"overlong stored length": append([]byte{0, 0, 0x85, 0x00, 5}, id32...),
		"truncated raw length":   {0, 0, 5, 0x85},
		"missing id":             append([]byte{0, 0, 5, 5}, id32[:31]...),
	} {
		tail := footer(append([]byte(nil), tr...))
		size := int64(len(tail)) + 5
		if _, err := ParsePackTrailer(tail, size); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", name, err)
		}
	}
	// More entries than a pack may hold, each of them well formed (a raw
	// blob of one byte), in a pack whose size they add up to.
	var tr []byte
	for range MaxPackBlobs + 1 {
		tr = append(append(tr, 0, 0, 1, 1), id32...)
	}
	if _, err := ParsePackTrailer(footer(tr), int64(len(tr))+PackFooterSize+MaxPackBlobs+1); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("too many entries: %v, want ErrCorrupt", err)
	}
}
