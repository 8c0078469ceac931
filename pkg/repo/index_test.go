package repo

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/klauspost/compress/zstd"
)

// testPacks returns index entries like a backup's: packs of data blobs of
// random ids, mostly zstd, stored one after the other.
func testPacks(seed uint64, packs, blobsPerPack int) []PackIndex {
	rng := rand.New(rand.NewPCG(seed, seed))
	var out []PackIndex
	for range packs {
		var p PackIndex
		for j := range p.Pack {
			p.Pack[j] = byte(rng.Uint32())
		}
		off := uint32(0)
		for range blobsPerPack {
			var b BlobEntry
			for j := range b.ID {
				b.ID[j] = byte(rng.Uint32())
			}
			b.RawLen = 1 + rng.Uint32N(chunk.DefaultMaxSize)
			b.StoredLen, b.Compression = b.RawLen, chunk.Raw
			if rng.IntN(4) > 0 && b.RawLen > 8 {
				b.StoredLen, b.Compression = b.RawLen/8+rng.Uint32N(b.RawLen-b.RawLen/8), chunk.Zstd
			}
			b.Offset = off
			off += b.StoredLen
			p.Blobs = append(p.Blobs, b)
		}
		out = append(out, p)
	}
	return out
}

// zstdFrame returns a hand-made zstd frame, without content size, holding
// raw as one raw block followed by rle blocks of 128 KiB of zeros (4 bytes
// each): a frame that expands as far as one likes.
func zstdFrame(raw []byte, rle int) []byte {
	b := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x50} // no content size, 1 MiB window
	block := func(typ, size uint32, last bool) {
		h := typ<<1 | size<<3
		if last {
			h |= 1
		}
		b = append(b, byte(h), byte(h>>8), byte(h>>16))
	}
	block(0, uint32(len(raw)), rle == 0)
	b = append(b, raw...)
	for i := range rle {
		block(1, 128<<10, i == rle-1)
		b = append(b, 0)
	}
	return b
}

func indexObject(body []byte) []byte {
	return indexEncoder.EncodeAll(body, []byte(indexMagic))
}

// blobBody encodes one blob entry of an index body, varints as given.
func blobBody(id byte, typ, comp byte, vals ...[]byte) []byte {
	b := append(bytes.Repeat([]byte{id}, 32), typ, comp)
	for _, v := range vals {
		b = append(b, v...)
	}
	return b
}

func uv(v uint64) []byte { return binary.AppendUvarint(nil, v) }

func packBody(id byte, n uint64, blobs ...[]byte) []byte {
	b := append(bytes.Repeat([]byte{id}, 32), uv(n)...)
	for _, bl := range blobs {
		b = append(b, bl...)
	}
	return b
}

// hostileIndexBodies are index bodies that a reader must refuse.
func hostileIndexBodies() map[string][]byte {
	ok := blobBody(1, 0, 1, uv(0), uv(10), uv(100))
	return map[string][]byte{
		"type 2":                packBody(9, 1, blobBody(1, 2, 1, uv(0), uv(10), uv(100))),
		"compression 2":         packBody(9, 1, blobBody(1, 0, 2, uv(0), uv(10), uv(100))),
		"raw length 0":          packBody(9, 1, blobBody(1, 0, 0, uv(0), uv(0), uv(0))),
		"data above the cap":    packBody(9, 1, blobBody(1, 0, 0, uv(0), uv(MaxDataBlobSize+1), uv(MaxDataBlobSize+1))),
		"tree above the cap":    packBody(9, 1, blobBody(1, 1, 0, uv(0), uv(MaxTreeSize+1), uv(MaxTreeSize+1))),
		"raw stored != raw":     packBody(9, 1, blobBody(1, 0, 0, uv(0), uv(10), uv(11))),
		"zstd not smaller":      packBody(9, 1, blobBody(1, 0, 1, uv(0), uv(10), uv(10))),
		"zstd stored 0":         packBody(9, 1, blobBody(1, 0, 1, uv(0), uv(0), uv(10))),
		"zstd cannot hold":      packBody(9, 1, blobBody(1, 0, 1, uv(0), uv(10), uv(3<<17+1))),
		"beyond 4 GiB":          packBody(9, 1, blobBody(1, 0, 1, uv(1<<32-5), uv(10), uv(100))),
		"offset above 32 bits":  packBody(9, 1, blobBody(1, 0, 1, uv(1<<32), uv(10), uv(100))),
		"overlapping blobs":     packBody(9, 2, ok, blobBody(2, 0, 1, uv(5), uv(10), uv(100))),
		"same blob twice":       packBody(9, 2, ok, ok),
		"blobs out of order":    packBody(9, 2, blobBody(1, 0, 1, uv(20), uv(10), uv(100)), ok),
		"pack listed twice":     append(packBody(9, 1, ok), packBody(9, 1, ok)...),
		"pack of no blobs":      packBody(9, 0),
		"overlong count 1":      append(bytes.Repeat([]byte{9}, 32), append([]byte{0x81, 0x00}, ok...)...),
		"overlong offset":       packBody(9, 1, blobBody(1, 0, 1, []byte{0x80, 0x00}, uv(10), uv(100))),
		"overlong raw length":   packBody(9, 1, blobBody(1, 0, 1, uv(0), uv(10), []byte{0xe4, 0x00})),
		"count beyond the body": packBody(9, 2, ok),
		"count 10^8":            packBody(9, 1e8, ok),
		"varint overflow":       packBody(9, 1, blobBody(1, 0, 1, bytes.Repeat([]byte{0xff}, 10), uv(10), uv(100))),
		"truncated pack id":     bytes.Repeat([]byte{9}, 20),
		"truncated entry":       packBody(9, 1, ok[:len(ok)-1]),
		"no count":              bytes.Repeat([]byte{9}, 32),
	}
}

func TestIndexRoundTrip(t *testing.T) {
	packs := testPacks(1, 20, 300)
	packs[3].Blobs[7].Type = TreeBlob
	packs[3].Blobs[7].RawLen = min(packs[3].Blobs[7].RawLen, MaxTreeSize)
	packs[3].Blobs[7].StoredLen = min(packs[3].Blobs[7].StoredLen, packs[3].Blobs[7].RawLen-1)
	packs[3].Blobs[7].Compression = chunk.Zstd
	got, err := DecodeIndex(EncodeIndex(packs))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(packs) {
		t.Fatalf("%d packs, want %d", len(got), len(packs))
	}
	for i := range packs {
		if got[i].Pack != packs[i].Pack || len(got[i].Blobs) != len(packs[i].Blobs) {
			t.Fatalf("pack %d differs", i)
		}
		for j := range packs[i].Blobs {
			if got[i].Blobs[j] != packs[i].Blobs[j] {
				t.Fatalf("pack %d blob %d: %+v, want %+v", i, j, got[i].Blobs[j], packs[i].Blobs[j])
			}
		}
	}
	if !bytes.Equal(encodeIndexBody(got), encodeIndexBody(packs)) {
		t.Fatal("body differs after a round trip")
	}
	// The repository's own data cap applies where it is known.
	if _, err := DecodeIndexMax(EncodeIndex(packs), 1<<20); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("data blobs above the repository's chunk_max_size: %v", err)
	}
	// Unsorted blobs are written in pack order.
	rev := []PackIndex{{Pack: packs[0].Pack, Blobs: append([]BlobEntry(nil), packs[0].Blobs...)}}
	for i, j := 0, len(rev[0].Blobs)-1; i < j; i, j = i+1, j-1 {
		rev[0].Blobs[i], rev[0].Blobs[j] = rev[0].Blobs[j], rev[0].Blobs[i]
	}
	if got, err := DecodeIndex(EncodeIndex(rev)); err != nil || got[0].Blobs[0] != packs[0].Blobs[0] {
		t.Fatalf("reversed blobs: %v", err)
	}
	if rev[0].Blobs[0] == packs[0].Blobs[0] {
		t.Fatal("EncodeIndex sorted the caller's slice")
	}
	// An empty index object is valid.
	if got, err := DecodeIndex(EncodeIndex(nil)); err != nil || len(got) != 0 {
		t.Fatalf("empty index: %v, %v", got, err)
	}
}

func TestDecodeIndexRefusesHostileBodies(t *testing.T) {
	for name, body := range hostileIndexBodies() {
		if _, err := DecodeIndex(indexObject(body)); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: DecodeIndex = %v, want ErrCorrupt", name, err)
		}
	}
	good := EncodeIndex(testPacks(2, 2, 3))
	objs := map[string][]byte{
		"no magic":         good[1:],
		"truncated frame":  good[:len(good)-3],
		"trailing garbage": append(bytes.Clone(good), 1, 2, 3),
		"flipped byte":     append(bytes.Clone(good[:len(good)-10]), good[len(good)-10]^1),
		"not zstd":         append([]byte(indexMagic), "plain body"...),
		"object too large": append([]byte(indexMagic), make([]byte, MaxIndexObjectSize)...),
	}
	for name, obj := range objs {
		if _, err := DecodeIndex(obj); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: DecodeIndex = %v, want ErrCorrupt", name, err)
		}
	}
}

func TestDecodeIndexBombs(t *testing.T) {
	// The index bomb: a ~100 KB frame of zeros (it expands to 3 GB) whose
	// one pack claims 10^8 blobs.
	zeros := zstdFrame(packBody(0, 1e8), 25000)
	// A frame claiming a window beyond indexMaxWindow.
	window := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x78, 1, 0, 0} // 1 GiB window
	// Single-segment frames claiming a content size (their window) of
	// 4 GiB, and of 15 MiB from a frame too short to hold it.
	single := func(fcs uint64, pad int) []byte {
		b := binary.LittleEndian.AppendUint64([]byte{0x28, 0xb5, 0x2f, 0xfd, 0xe0}, fcs)
		return append(b, make([]byte, pad)...)
	}
	// Valid entries (in distinct packs), then 1 GiB of zeros: stopped at
	// the first zero pack, whatever the frame would expand to.
	var valid []byte
	for i := range 1 << 10 {
		valid = append(valid, packBody(byte(i), 1, blobBody(1, 0, 1, uv(0), uv(10), uv(100)))...)
		valid[0], valid[1] = byte(i), byte(i>>8)
	}
	long := zstdFrame(valid, 514) // 64 MiB of zeros: beyond MaxIndexSize
	for name, obj := range map[string][]byte{
		"zeros claiming 10^8 blobs": append([]byte(indexMagic), zeros...),
		"zeros claiming 10^6 blobs": append([]byte(indexMagic), zstdFrame(packBody(0, 1e6), 25000)...),
		"1 GiB window":              append([]byte(indexMagic), window...),
		"single segment of 4 GiB":   append([]byte(indexMagic), single(1<<32, 1<<20)...),
		"single segment of 15 MiB":  append([]byte(indexMagic), single(15<<20, 400)...),
		"valid packs, then zeros":   append([]byte(indexMagic), long...),
	} {
		var err error
		// With a decoder and its buffers allocated once, as the pool's are
		// between calls (a fresh decoder's cost is measured below). The
		// decoder is the test's own: a collection may empty the pool
		// between two calls, and did in CI. The least of three, as
		// TotalAlloc counts other goroutines too.
		d := newIndexDecoder()
		decodeIndexWith(d, obj, MaxDataBlobSize)
		n := uint64(1 << 62)
		for range 3 {
			n = min(n, allocated(func() { _, err = decodeIndexWith(d, obj, MaxDataBlobSize) }))
		}
		if _, perr := DecodeIndex(obj); !errors.Is(perr, ErrCorrupt) {
			t.Errorf("%s: DecodeIndex = %v, want ErrCorrupt", name, perr)
		}
		t.Logf("%s: %d bytes, allocated %d", name, len(obj), n)
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", name, err)
		}
		if n > 8*uint64(len(obj))+64<<10 {
			t.Errorf("%s: %d-byte object allocated %d bytes", name, len(obj), n)
		}
	}
	// A fresh decoder (empty pool) costs its tables and window once.
	fresh := map[string][]byte{"zeros": zeros, "1 GiB window": window, "zero blobs": zstdFrame(packBody(0, 1e6), 10)}
	for name, frame := range fresh {
		var err error
		obj := append([]byte(indexMagic), frame...)
		n := allocated(func() { _, err = decodeIndexWith(newIndexDecoder(), obj, MaxDataBlobSize) })
		t.Logf("%s, fresh decoder: allocated %d", name, n)
		if !errors.Is(err, ErrCorrupt) || n > 4<<20 {
			t.Errorf("%s, fresh decoder: %v, allocated %d bytes", name, err, n)
		}
	}
}

// counterBody returns an index body of n packs of one blob each whose ids
// differ only in a counter: the most compressible body that every rule but
// the size limit lets through, the best an attacker can do.
func counterBody(n int) []byte {
	body := make([]byte, 0, n*70)
	for i := range n {
		id := binary.BigEndian.AppendUint32(make([]byte, 28), uint32(i))
		body = append(body, id...)
		body = append(body, 1)
		body = append(body, id...)
		body = append(body, 0, 1, 0, 10, 100)
	}
	return body
}

func TestDecodeIndexAllocatesWhatItParses(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	packs := testPacks(3, 100, 1000)
	obj := EncodeIndex(packs)
	DecodeIndex(obj)
	var err error
	n := allocated(func() { _, err = DecodeIndex(obj) })
	body := encodeIndexBody(packs)
	t.Logf("%d blobs, object %d bytes, body %d bytes: allocated %d", 100*1000, len(obj), len(body), n)
	// 48-byte entries, room at most doubled while they come.
	if err != nil || n > 2*uint64(100*1000*48)+1<<20 {
		t.Fatalf("%v, allocated %d", err, n)
	}
}

func TestEncodeIndexFramesFitTheDecoder(t *testing.T) {
	if testing.Short() {
		t.Skip("encodes a 20 MB index")
	}
	for _, blobs := range []int{100, MaxIndexBlobs} {
		obj := EncodeIndex(testPacks(4, blobs/100, 100))
		var h zstd.Header
		if err := h.Decode(obj[len(indexMagic):]); err != nil {
			t.Fatal(err)
		}
		w := h.WindowSize
		if h.SingleSegment {
			w = h.FrameContentSize
		}
		if w > indexMaxWindow || !h.HasFCS {
			t.Fatalf("%d blobs: window %d (single segment %v), content size %v", blobs, w, h.SingleSegment, h.HasFCS)
		}
		if _, err := DecodeIndex(obj); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSplitIndex(t *testing.T) {
	one := func(n int) PackIndex {
		return PackIndex{Pack: chunk.Hash([]byte{byte(n), byte(n >> 8), byte(n >> 16)}), Blobs: make([]BlobEntry, n)}
	}
	count := func(parts [][]PackIndex) (packs, blobs int) {
		for _, p := range parts {
			b := 0
			for _, pi := range p {
				b += len(pi.Blobs)
			}
			if len(p) > MaxIndexPacks || b > MaxIndexBlobs || len(p) == 0 {
				t.Fatalf("part of %d packs, %d blobs", len(p), b)
			}
			packs += len(p)
			blobs += b
		}
		return packs, blobs
	}
	if parts := SplitIndex(nil); len(parts) != 0 {
		t.Fatalf("nil: %d parts", len(parts))
	}
	if parts := SplitIndex([]PackIndex{one(3), one(4)}); len(parts) != 1 || len(parts[0]) != 2 {
		t.Fatalf("small: %v", parts)
	}
	// A pack larger than a part is spread over parts.
	big := one(MaxIndexBlobs*2 + 5)
	parts := SplitIndex([]PackIndex{one(7), big, one(9)})
	if p, b := count(parts); len(parts) != 3 || b != 7+len(big.Blobs)+9 || p != 5 {
		t.Fatalf("big pack: %d parts, %d packs, %d blobs", len(parts), p, b)
	}
	// Many small packs.
	many := make([]PackIndex, MaxIndexPacks+10)
	for i := range many {
		many[i] = one(1)
	}
	parts = SplitIndex(many)
	if p, b := count(parts); len(parts) != 2 || p != len(many) || b != len(many) {
		t.Fatalf("many packs: %d parts, %d packs, %d blobs", len(parts), p, b)
	}
	// The worst case of a part fits one index object.
	worst := make([]PackIndex, MaxIndexPacks)
	per := MaxIndexBlobs / MaxIndexPacks
	for i := range worst {
		worst[i].Pack = chunk.Hash(binary.AppendUvarint(nil, uint64(i)))
		for j := range per {
			worst[i].Blobs = append(worst[i].Blobs, BlobEntry{Type: TreeBlob, Compression: chunk.Zstd, Offset: 1<<31 + uint32(j)*(1<<20), StoredLen: 1<<20 - 1, RawLen: MaxTreeSize})
		}
	}
	if n := len(encodeIndexBody(worst)); n > MaxIndexSize {
		t.Fatalf("largest part encodes to %d bytes, above MaxIndexSize", n)
	}
}

// benchIndexes are index objects of about 100 KB, 1 MB and 10 MB.
func benchIndexes() map[string][]byte {
	out := map[string][]byte{}
	for _, blobs := range []int{2_500, 25_000, 250_000} {
		obj := EncodeIndex(testPacks(5, blobs/50, 50))
		out[fmt.Sprintf("%dKB", len(obj)>>10)] = obj
	}
	return out
}

func BenchmarkDecodeIndex(b *testing.B) {
	for name, obj := range benchIndexes() {
		b.Run("parallel-"+"pool/"+name, func(b *testing.B) {
			b.SetBytes(int64(len(obj)))
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := DecodeIndex(obj); err != nil {
						b.Error(err)
					}
				}
			})
		})
		b.Run("pool/"+name, func(b *testing.B) {
			b.SetBytes(int64(len(obj)))
			for b.Loop() {
				if _, err := DecodeIndex(obj); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("per-call/"+name, func(b *testing.B) {
			b.SetBytes(int64(len(obj)))
			for b.Loop() {
				if _, err := decodeIndexWith(newIndexDecoder(), obj, MaxDataBlobSize); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func FuzzDecodeIndex(f *testing.F) {
	ref, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(MaxIndexSize+1))
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte{}, false)
	f.Add(encodeIndexBody(testPacks(6, 1, 1)), false)
	f.Add(encodeIndexBody(testPacks(7, 3, 4)), false)
	f.Add(EncodeIndex(testPacks(8, 2, 2)), true)
	_, gid, gentries := testGroupPack(f)
	f.Add(encodeIndexBody([]PackIndex{{Pack: gid, Blobs: gentries}}), false)
	for _, body := range hostileIndexBodies() {
		f.Add(body, false)
	}
	f.Add(append([]byte(indexMagic), zstdFrame(packBody(0, 1e8), 25000)...), true)
	f.Add(append([]byte(indexMagic), zstdFrame(packBody(0, 3, blobBody(1, 0, 0, uv(0), uv(5), uv(5))), 2)...), true)
	f.Fuzz(func(t *testing.T, in []byte, raw bool) {
		obj, body := in, in
		if raw {
			if len(obj) >= len(indexMagic) {
				body, _ = ref.DecodeAll(obj[len(indexMagic):], nil)
			}
		} else {
			obj = indexObject(in)
		}
		var packs []PackIndex
		var err error
		n := allocated(func() { packs, err = DecodeIndex(obj) })
		// Entries take at most 2x48 bytes per 37 of body; a decoder fresh
		// from the pool costs its tables (~1.2 MB) and the window the frame
		// may claim (at most 128 KiB per 4 bytes of it, twice for small ones).
		window := min(uint64(len(obj)/4+1)*128<<10, indexMaxWindow)
		if limit := 4*uint64(len(body)+len(obj)) + 2<<20 + 2*window; n > limit {
			t.Fatalf("decoding %d bytes (body %d) allocated %d", len(obj), len(body), n)
		}
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
			return
		}
		for _, p := range packs {
			for i := range p.Blobs {
				if err := checkBlobEntry(&p.Blobs[i], MaxDataBlobSize); err != nil {
					t.Fatalf("accepted %v", err)
				}
			}
		}
		if !bytes.Equal(encodeIndexBody(packs), body) {
			t.Fatal("accepted a non-canonical index body")
		}
		if _, err := DecodeIndex(EncodeIndex(packs)); err != nil {
			t.Fatalf("re-encoded index refused: %v", err)
		}
	})
}
