package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/storage/mem"
)

// groupPack builds a pack of a single blob, a group of three and another
// single blob, and returns it with the raw blobs by id.
func groupPack(t testing.TB, r *Repository) ([]byte, chunk.ID, []BlobEntry, map[chunk.ID][]byte) {
	t.Helper()
	raws := map[chunk.ID][]byte{}
	pb := NewPackBuilder(1 << 10)
	single := func(s string) {
		raw := bytes.Repeat([]byte(s), 100)
		stored, comp := r.Codec().Compress(nil, raw)
		pb.Add(chunk.Hash(raw), DataBlob, comp, stored, len(raw))
		raws[chunk.Hash(raw)] = raw
	}
	single("alone ")
	var content []byte
	var members []GroupMember
	for i := range 3 {
		raw := []byte(fmt.Sprintf("small file %d: %s", i, bytes.Repeat([]byte("text "), 20+i)))
		content = append(content, raw...)
		members = append(members, GroupMember{ID: chunk.Hash(raw), RawLen: uint32(len(raw))})
		raws[chunk.Hash(raw)] = raw
	}
	pb.AddGroup(DataBlob, r.Codec().CompressFrame(nil, content), members)
	single("after ")
	data, id, entries := pb.Finish()
	return data, id, entries, raws
}

func TestGroupsRoundTrip(t *testing.T) {
	ctx := context.Background()
	r, err := OpenOrInit(ctx, mem.New())
	if err != nil {
		t.Fatal(err)
	}
	data, id, entries, raws := groupPack(t, r)
	if len(entries) != 5 || entries[1].Compression != chunk.ZstdGroup || entries[2].RawOffset != entries[1].RawLen || entries[1].Offset != entries[3].Offset {
		t.Fatalf("entries %+v", entries)
	}

	// The trailer gives back exactly the entries, group members included.
	size := int64(len(data))
	parsed, err := ParsePackTrailer(data[size-int64(PackTrailerReadSize(len(entries))):], size)
	if err != nil || !slices.Equal(parsed, entries) {
		t.Fatalf("trailer: %v\n got %+v\nwant %+v", err, parsed, entries)
	}
	// So does an index object, and it re-encodes to the same bytes.
	obj := EncodeIndex([]PackIndex{{Pack: id, Blobs: entries}})
	packs, err := DecodeIndex(obj)
	if err != nil || len(packs) != 1 || !slices.Equal(packs[0].Blobs, entries) {
		t.Fatalf("index: %v %+v", err, packs)
	}
	if again := EncodeIndex(packs); !bytes.Equal(again, obj) {
		t.Fatal("index does not re-encode to the same object")
	}
	// Every blob decodes from its stored bytes; grouped ones from their
	// frame, decoded once.
	key := PackKey(id)
	var frame []byte
	for _, e := range entries {
		stored := data[e.Offset : e.Offset+e.StoredLen]
		got, err := r.DecodeBlob(key, e, stored, nil)
		if err != nil || !bytes.Equal(got, raws[e.ID]) {
			t.Fatalf("blob %s: %v", e.ID.Short(), err)
		}
		if e.Compression == chunk.ZstdGroup {
			if frame == nil {
				if frame, err = r.DecodeFrame(key, e, stored, nil); err != nil {
					t.Fatal(err)
				}
			}
			if b, err := r.BlobFromFrame(key, e, frame); err != nil || !bytes.Equal(b, raws[e.ID]) {
				t.Fatalf("blob %s from its frame: %v", e.ID.Short(), err)
			}
		}
	}
}

func TestGroupsRefused(t *testing.T) {
	ctx := context.Background()
	r, err := OpenOrInit(ctx, mem.New())
	if err != nil {
		t.Fatal(err)
	}
	data, id, entries, _ := groupPack(t, r)
	key := PackKey(id)
	g := entries[2] // the second member
	frameOf := func(e BlobEntry) []byte { return data[e.Offset : e.Offset+e.StoredLen] }
	noFCS, err := zstd.NewWriter(nil, zstd.WithSingleSegment(false))
	if err != nil {
		t.Fatal(err)
	}
	streamed := func() []byte {
		var b bytes.Buffer
		noFCS.Reset(&b)
		noFCS.Write(bytes.Repeat([]byte("x"), 4000))
		noFCS.Flush() // the size is not known when the header is written
		noFCS.Write(bytes.Repeat([]byte("y"), 4000))
		noFCS.Close()
		return b.Bytes()
	}()
	huge := r.Codec().CompressFrame(nil, make([]byte, MaxGroupSize+1))
	cases := map[string]func() error{
		"wrong id": func() error {
			e := g
			e.ID[0] ^= 1
			_, err := r.DecodeBlob(key, e, frameOf(e), nil)
			return err
		},
		"beyond the frame": func() error {
			e := g
			e.RawOffset += 1000
			_, err := r.DecodeBlob(key, e, frameOf(e), nil)
			return err
		},
		"frame without a content size": func() error {
			e := g
			e.StoredLen = uint32(len(streamed))
			_, err := r.DecodeFrame(key, e, streamed, nil)
			return err
		},
		"frame above MaxGroupSize": func() error {
			e := g
			e.StoredLen = uint32(len(huge))
			_, err := r.DecodeFrame(key, e, huge, nil)
			return err
		},
		"damaged frame": func() error {
			f := bytes.Clone(frameOf(g))
			f[len(f)/2] ^= 0xff
			_, err := r.DecodeBlob(key, g, f, nil)
			return err
		},
		"not a group": func() error {
			e := g
			e.Compression = chunk.Zstd
			_, err := r.BlobFromFrame(key, e, bytes.Repeat([]byte("x"), 4000))
			return err
		},
	}
	for name, c := range cases {
		if err := c(); !errors.Is(err, ErrCorrupt) || !bytes.Contains([]byte(err.Error()), []byte(key)) {
			t.Errorf("%s: %v, want ErrCorrupt naming the pack", name, err)
		}
	}

	// Index entries: a member overlapping the one before, a raw offset
	// outside a group.
	bad := slices.Clone(entries)
	bad[3].RawOffset = bad[2].RawOffset
	if _, err := DecodeIndex(EncodeIndex([]PackIndex{{Pack: id, Blobs: bad}})); !errors.Is(err, ErrCorrupt) {
		t.Errorf("overlapping members: %v, want ErrCorrupt", err)
	}
	bad = slices.Clone(entries)
	bad[0].RawOffset = 1
	if err := checkBlobEntry(&bad[0], MaxDataBlobSize); !errors.Is(err, ErrCorrupt) {
		t.Errorf("raw offset outside a group: %v, want ErrCorrupt", err)
	}
}

// testGroupPack is groupPack for fuzz seeds.
func testGroupPack(t testing.TB) ([]byte, chunk.ID, []BlobEntry) {
	codec, err := chunk.NewCodec(1)
	if err != nil {
		t.Fatal(err)
	}
	data, id, entries, _ := groupPack(t, &Repository{codec: codec})
	return data, id, entries
}
