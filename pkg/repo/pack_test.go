package repo

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/backupd/backupd/pkg/chunk"
)

// testPack returns a pack of n blobs, alternately raw and zstd.
func testPack(t testing.TB, n int) []byte {
	codec, err := chunk.NewCodec(1)
	if err != nil {
		t.Fatal(err)
	}
	pb := NewPackBuilder(1 << 10)
	for i := range n {
		raw := bytes.Repeat([]byte{byte(i)}, 1+i*(i%2)*50)
		stored, comp := codec.Compress(nil, raw)
		pb.Add(chunk.Hash(raw), DataBlob, comp, stored, len(raw))
	}
	data, _, _ := pb.Finish()
	return data
}

// trailerOf encodes a footer claiming tlen bytes of trailer.
func footerOf(tlen uint32) []byte {
	return append(binary.LittleEndian.AppendUint32(nil, tlen), packMagic...)
}

func TestPackTrailerInTwoReads(t *testing.T) {
	data := testPack(t, 7)
	size := int64(len(data))
	need, err := PackTrailerSize(data[size-PackFooterSize:], size)
	if err != nil || need != int64(PackTrailerReadSize(7)) {
		t.Fatalf("PackTrailerSize = %d, %v", need, err)
	}
	entries, err := ParsePackTrailer(data[size-need:], size)
	if err != nil || len(entries) != 7 {
		t.Fatalf("ParsePackTrailer: %d entries, %v", len(entries), err)
	}
	codec, _ := chunk.NewCodec(1)
	for _, e := range entries {
		raw, err := codec.Decompress(nil, data[e.Offset:e.Offset+e.StoredLen], e.Compression, int(e.RawLen))
		if err != nil || chunk.Hash(raw) != e.ID {
			t.Fatalf("blob %s: %v", e.ID.Short(), err)
		}
	}
	// Less than the trailer: refused, nothing read past what was given.
	if _, err := ParsePackTrailer(data[size-need+1:], size); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("short tail: %v", err)
	}
	// The repository's data cap applies where it is known.
	if _, err := ParsePackTrailerMax(data, size, 10); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("blobs above the repository's cap: %v", err)
	}
	// An empty pack is a footer alone.
	empty, _, _ := NewPackBuilder(0).Finish()
	if got, err := ParsePackTrailer(empty, int64(len(empty))); err != nil || len(got) != 0 {
		t.Fatalf("empty pack: %v, %v", got, err)
	}
}

func TestPackTrailerSizeRefuses(t *testing.T) {
	cases := map[string]struct {
		footer []byte
		size   int64
	}{
		"short footer":          {footerOf(0)[1:], 100},
		"long footer":           {append([]byte{0}, footerOf(0)...), 100},
		"bad magic":             {append(binary.LittleEndian.AppendUint32(nil, 42), "BKPDPK03"...), 100},
		"not whole entries":     {footerOf(43), 1000},
		"longer than the pack":  {footerOf(42 * 3), 42*3 + PackFooterSize - 1},
		"above the limit":       {footerOf(MaxPackTrailerSize + trailerEntry), 1 << 40},
		"4 GiB trailer":         {footerOf(1<<32 - 1), 1 << 40},
		"pack smaller than one": {footerOf(0), PackFooterSize - 1},
	}
	for name, c := range cases {
		if n, err := PackTrailerSize(c.footer, c.size); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: PackTrailerSize = %d, %v", name, n, err)
		}
	}
	if n, err := PackTrailerSize(footerOf(MaxPackTrailerSize), 1<<40); err != nil || n != MaxPackTrailerSize+PackFooterSize {
		t.Errorf("trailer at the limit: %d, %v", n, err)
	}
}

// trailerBytes re-encodes entries as a trailer and footer.
func trailerBytes(entries []BlobEntry) []byte { return appendTrailer(nil, entries) }

func TestParsePackTrailerRefuses(t *testing.T) {
	data := testPack(t, 3)
	entry := func(typ, comp byte, stored, raw uint32) []byte {
		e := append(make([]byte, 32), typ, comp)
		e = binary.LittleEndian.AppendUint32(e, stored)
		return binary.LittleEndian.AppendUint32(e, raw)
	}
	withEntry := func(e []byte, blobs int64) ([]byte, int64) {
		tail := append(e, footerOf(trailerEntry)...)
		return tail, int64(len(tail)) + blobs
	}
	cases := map[string]func() ([]byte, int64){
		"type 2":                  func() ([]byte, int64) { return withEntry(entry(2, 0, 10, 10), 10) },
		"compression 3":           func() ([]byte, int64) { return withEntry(entry(0, 3, 10, 10), 10) },
		"group continues nothing": func() ([]byte, int64) { return withEntry(entry(0, 2, 0, 10), 0) },
		"group beyond its limit":  func() ([]byte, int64) { return withEntry(entry(0, 2, 1<<20, MaxGroupSize+1), 1<<20) },
		"group frame cannot hold": func() ([]byte, int64) { return withEntry(entry(0, 2, 10, 3<<17+1), 10) },
		"group of two types": func() ([]byte, int64) {
			tail := append(append(entry(0, 2, 100, 50), entry(1, 2, 0, 50)...), footerOf(2*trailerEntry)...)
			return tail, int64(len(tail)) + 100
		},
		"group continued after a single blob": func() ([]byte, int64) {
			tail := append(append(entry(0, 0, 10, 10), entry(0, 2, 0, 50)...), footerOf(2*trailerEntry)...)
			return tail, int64(len(tail)) + 10
		},
		"raw length 0":      func() ([]byte, int64) { return withEntry(entry(0, 0, 0, 0), 0) },
		"raw stored != raw": func() ([]byte, int64) { return withEntry(entry(0, 0, 10, 11), 10) },
		"zstd not smaller":  func() ([]byte, int64) { return withEntry(entry(0, 1, 10, 10), 10) },
		"zstd cannot hold":  func() ([]byte, int64) { return withEntry(entry(0, 1, 10, 3<<17+1), 10) },
		"data above the cap": func() ([]byte, int64) {
			return withEntry(entry(0, 0, MaxDataBlobSize+1, MaxDataBlobSize+1), MaxDataBlobSize+1)
		},
		"tree above the cap": func() ([]byte, int64) { return withEntry(entry(1, 0, MaxTreeSize+1, MaxTreeSize+1), MaxTreeSize+1) },
		"blobs beyond 4 GiB": func() ([]byte, int64) {
			var tail []byte
			for range 300 {
				tail = append(tail, entry(0, 0, MaxDataBlobSize, MaxDataBlobSize)...)
			}
			tail = append(tail, footerOf(300*trailerEntry)...)
			return tail, int64(len(tail)) + 300*MaxDataBlobSize
		},
		"sizes do not add up": func() ([]byte, int64) { return data, int64(len(data)) + 1 },
		"tail longer than the pack": func() ([]byte, int64) {
			return data, int64(len(data)) - 1
		},
		"flipped magic": func() ([]byte, int64) {
			b := bytes.Clone(data)
			b[len(b)-1] ^= 1
			return b, int64(len(b))
		},
		"no footer": func() ([]byte, int64) { return data[:5], int64(len(data)) },
	}
	for name, c := range cases {
		tail, size := c()
		if _, err := ParsePackTrailer(tail, size); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: ParsePackTrailer = %v, want ErrCorrupt", name, err)
		}
	}
}

func TestPackBuilderFull(t *testing.T) {
	pb := NewPackBuilder(0)
	pb.Add(chunk.ID{}, DataBlob, chunk.Raw, make([]byte, 100), 100)
	if pb.Full(101) || !pb.Full(100) {
		t.Fatal("Full by size")
	}
	for range MaxPackBlobs - 1 {
		pb.Add(chunk.ID{}, DataBlob, chunk.Raw, nil, 0)
	}
	if !pb.Full(1 << 30) {
		t.Fatal("not Full at MaxPackBlobs")
	}
}

func FuzzParsePackTrailer(f *testing.F) {
	for _, n := range []int{0, 1, 5} {
		data := testPack(f, n)
		f.Add(data, uint16(0))
		f.Add(data[len(data)-PackTrailerReadSize(n):], uint16(len(data)-PackTrailerReadSize(n)))
		f.Add(data[len(data)-PackTrailerReadSize(n):], uint16(0))
	}
	data, _, entries := testGroupPack(f)
	f.Add(data[len(data)-PackTrailerReadSize(len(entries)):], uint16(len(data)-PackTrailerReadSize(len(entries))))
	f.Add(footerOf(1<<32-2), uint16(100))
	f.Add(footerOf(trailerEntry*1000), uint16(0))
	f.Fuzz(func(t *testing.T, tail []byte, unread uint16) {
		size := int64(len(tail)) + int64(unread)
		var entries []BlobEntry
		var err error
		n := allocated(func() { entries, err = ParsePackTrailer(tail, size) })
		// Slack for the fuzzing engine's own allocations meanwhile.
		if n > 2*uint64(len(tail))+64<<10 {
			t.Fatalf("parsing %d bytes allocated %d", len(tail), n)
		}
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
			return
		}
		need, err := PackTrailerSize(tail[len(tail)-PackFooterSize:], size)
		if err != nil || need != int64(PackTrailerReadSize(len(entries))) {
			t.Fatalf("PackTrailerSize = %d, %v for an accepted trailer of %d entries", need, err, len(entries))
		}
		if !bytes.Equal(trailerBytes(entries), tail[int64(len(tail))-need:]) {
			t.Fatal("entries do not re-encode to the trailer")
		}
		off := int64(0)
		for i := range entries {
			e := &entries[i]
			if e.Compression == chunk.ZstdGroup && e.RawOffset > 0 {
				// A later member of a group: in the frame of the one before.
				if prev := &entries[i-1]; !sameFrame(prev, e) || e.RawOffset != prev.RawOffset+prev.RawLen || checkBlobEntry(e, MaxDataBlobSize) != nil {
					t.Fatalf("accepted entry %d: %+v after %+v", i, *e, *prev)
				}
				continue
			}
			if err := checkBlobEntry(e, MaxDataBlobSize); err != nil || int64(e.Offset) != off {
				t.Fatalf("accepted entry %d at %d: %+v, %v", i, off, *e, err)
			}
			off += int64(e.StoredLen)
		}
		if off+need != size {
			t.Fatalf("accepted blobs of %d bytes in a pack of %d with a %d-byte trailer", off, size, need)
		}
	})
}
