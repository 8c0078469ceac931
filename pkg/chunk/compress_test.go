package chunk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// rleBomb returns a hand-made zstd frame of n RLE blocks of 128 KiB of
// zeros each (4 bytes per block: n = 8192 is 32 KiB that expand to 1 GiB).
// With fcs >= 0 the frame header claims that content size; otherwise the
// frame, like a streamed one, says nothing about its size.
func rleBomb(n int, fcs int64) []byte {
	b := []byte{0x28, 0xb5, 0x2f, 0xfd}
	if fcs >= 0 {
		b = append(b, 0xc0, 0x50) // 8-byte content size, 1 MiB window
		b = binary.LittleEndian.AppendUint64(b, uint64(fcs))
	} else {
		b = append(b, 0x00, 0x50) // no content size, 1 MiB window
	}
	for i := range n {
		h := uint32(1)<<1 | uint32(128<<10)<<3 // RLE, 128 KiB
		if i == n-1 {
			h |= 1 // last block
		}
		b = append(b, byte(h), byte(h>>8), byte(h>>16), 0)
	}
	return b
}

// allocated returns how many bytes f allocates (TotalAlloc is cumulative,
// so the garbage collector running in between does not hide anything).
// TotalAlloc counts the whole process, so what other goroutines allocate
// meanwhile (the test framework's, the race detector's, a decoder's from
// the case before winding down) is counted too: f runs three times and
// the least is returned. f allocates as much each time, so what f itself
// allocates is never hidden.
func allocated(f func()) uint64 {
	least := uint64(math.MaxUint64)
	for range 3 {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		f()
		runtime.ReadMemStats(&after)
		least = min(least, after.TotalAlloc-before.TotalAlloc)
	}
	return least
}

func TestRLEBombIsAZstdFrame(t *testing.T) {
	// The hand-made frame must be valid zstd, or the bomb tests prove
	// nothing: an unlimited decoder expands it.
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	out, err := d.DecodeAll(rleBomb(8, -1), nil)
	if err != nil || len(out) != 8<<17 || bytes.Count(out, []byte{0}) != len(out) {
		t.Fatalf("decode rle bomb: %d bytes, %v", len(out), err)
	}
	if out, err = d.DecodeAll(rleBomb(8, 8<<17), nil); err != nil || len(out) != 8<<17 {
		t.Fatalf("decode rle bomb with size: %d bytes, %v", len(out), err)
	}
}

func TestDecompressRefusesBombsWithinBounds(t *testing.T) {
	c, err := NewCodec(int(DefaultLevel))
	if err != nil {
		t.Fatal(err)
	}
	giga := rleBomb(8192, -1) // 32 KiB -> 1 GiB
	cases := []struct {
		name     string
		stored   []byte
		rawLen   int
		maxAlloc uint64
	}{
		{"1 GiB frame, 4 KiB claimed", giga, 4 << 10, 1 << 20},
		{"1 GiB frame, 8 MiB claimed", giga, 8 << 20, 3 * 8 << 20},
		{"1 GiB frame, largest blob claimed", giga, MaxBlobSize, 3 * MaxBlobSize},
		{"frame claims 1 GiB", rleBomb(8192, 1<<30), 4 << 10, 64 << 10},
		{"frame claims the raw length, holds 1 GiB", rleBomb(8192, 1<<20), 1 << 20, 4 << 20},
		{"raw length above the codec's limit", giga, MaxBlobSize + 1, 4 << 10},
		{"raw length 1 GiB", giga, 1 << 30, 4 << 10},
		{"negative raw length", giga, -1, 4 << 10},
	}
	for _, tc := range cases {
		var err error
		n := allocated(func() { _, err = c.Decompress(nil, tc.stored, Zstd, tc.rawLen) })
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: err = %v, want ErrCorrupt", tc.name, err)
		}
		t.Logf("%s: allocated %d bytes", tc.name, n)
		if n > tc.maxAlloc {
			t.Errorf("%s: allocated %d bytes, want at most %d", tc.name, n, tc.maxAlloc)
		}
	}
	// The caller's cap is honoured below the codec's.
	stored, comp := c.Compress(nil, bytes.Repeat([]byte("abc"), 1000))
	if _, err := c.DecompressMax(nil, stored, comp, 3000, 2999); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("raw length above the caller's cap: %v", err)
	}
	if out, err := c.DecompressMax(nil, stored, comp, 3000, 3000); err != nil || len(out) != 3000 {
		t.Fatalf("raw length at the caller's cap: %d, %v", len(out), err)
	}
}

func TestDecompressLengths(t *testing.T) {
	c, err := NewCodecMax(int(DefaultLevel), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	raw := bytes.Repeat([]byte("0123456789"), 10000)
	stored, comp := c.Compress(nil, raw)
	if comp != Zstd {
		t.Fatal("not compressed")
	}
	for _, n := range []int{0, 1, len(raw) - 1, len(raw) + 1, 1 << 20} {
		if _, err := c.Decompress(nil, stored, comp, n); !errors.Is(err, ErrCorrupt) {
			t.Errorf("raw length %d of a %d-byte frame: %v", n, len(raw), err)
		}
	}
	if _, err := c.Decompress(nil, stored, comp, 1<<20+1); !errors.Is(err, ErrCorrupt) {
		t.Error("raw length above NewCodecMax's limit accepted")
	}
	// A frame without a content size that produces more or fewer bytes.
	for _, n := range []int{8<<17 - 1, 8<<17 + 1} {
		if _, err := c.Decompress(nil, rleBomb(8, -1), Zstd, n); !errors.Is(err, ErrCorrupt) {
			t.Errorf("unsized frame of %d bytes, raw length %d: %v", 8<<17, n, err)
		}
	}
	if out, err := c.Decompress(nil, rleBomb(8, -1), Zstd, 8<<17); err != nil || len(out) != 8<<17 {
		t.Errorf("unsized frame of the right length: %d, %v", len(out), err)
	}
	// Every buffer shape: none, too small, exact, with room to spare; the
	// prefix survives and spare capacity is kept for reuse.
	for _, capacity := range []int{0, 10, 5 + len(raw), 5 + len(raw) + zstdOverAlloc, 4 << 20} {
		dst := append(make([]byte, 0, capacity), "head:"...)
		out, err := c.Decompress(dst, stored, comp, len(raw))
		if err != nil || string(out[:5]) != "head:" || !bytes.Equal(out[5:], raw) {
			t.Fatalf("cap %d: %v", capacity, err)
		}
		if capacity >= len(out) && cap(out) != capacity {
			t.Fatalf("cap %d: result has cap %d", capacity, cap(out))
		}
	}
	if _, err := c.Decompress(nil, stored, 7, len(raw)); !errors.Is(err, ErrCorrupt) {
		t.Error("unknown compression accepted")
	}
	if _, err := NewCodecMax(1, 0); err == nil {
		t.Error("limit 0 accepted")
	}
}

func FuzzDecompress(f *testing.F) {
	const limit = 1 << 20
	c, err := NewCodecMax(int(DefaultLevel), limit)
	if err != nil {
		f.Fatal(err)
	}
	ref, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(4*limit))
	if err != nil {
		f.Fatal(err)
	}
	for _, raw := range [][]byte{nil, []byte("a"), bytes.Repeat([]byte("func main() {}\n"), 500), randomData(1, 300)} {
		stored, comp := c.Compress(nil, raw)
		f.Add(stored, uint8(comp), len(raw))
		f.Add(stored, uint8(Zstd), len(raw)+1)
		if len(stored) > 4 {
			f.Add(stored[:len(stored)-3], uint8(comp), len(raw)) // truncated
		}
	}
	f.Add(rleBomb(8192, -1), uint8(Zstd), 4<<10)
	f.Add(rleBomb(64, -1), uint8(Zstd), limit)
	f.Add(rleBomb(4, 1<<40), uint8(Zstd), 4<<17)
	f.Add(rleBomb(4, 4<<17), uint8(Zstd), 4<<17)
	f.Add([]byte("garbage"), uint8(Zstd), 10)
	f.Fuzz(func(t *testing.T, stored []byte, comp uint8, rawLen int) {
		out, err := c.Decompress([]byte("x"), stored, Compression(comp), rawLen)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
		} else {
			if rawLen < 0 || rawLen > limit || len(out) != 1+rawLen || out[0] != 'x' {
				t.Fatalf("accepted raw length %d, returned %d bytes", rawLen, len(out))
			}
			switch Compression(comp) {
			case Raw:
				if !bytes.Equal(out[1:], stored) {
					t.Fatal("raw blob changed")
				}
			case Zstd:
				want, err := ref.DecodeAll(stored, nil)
				if err != nil || !bytes.Equal(out[1:], want) {
					t.Fatalf("accepted a frame the reference decoder decodes otherwise (%v)", err)
				}
			default:
				t.Fatalf("accepted compression %d", comp)
			}
		}
		// Whatever the input, its own compression must come back intact.
		if len(stored) <= limit {
			s, k := c.Compress(nil, stored)
			back, err := c.Decompress(nil, s, k, len(stored))
			if err != nil || !bytes.Equal(back, stored) {
				t.Fatalf("round trip of %d bytes: %v", len(stored), err)
			}
		}
	})
}

func TestZstdMaxRawLen(t *testing.T) {
	c, err := NewCodec(int(DefaultLevel))
	if err != nil {
		t.Fatal(err)
	}
	// The most compressible blobs the encoder makes stay within the bound.
	for _, n := range []int{1, 1000, 128 << 10, 1 << 20, MaxBlobSize} {
		for _, raw := range [][]byte{make([]byte, n), bytes.Repeat([]byte("ab"), n/2)} {
			stored, comp := c.Compress(nil, raw)
			if comp == Zstd && len(raw) > ZstdMaxRawLen(len(stored)) {
				t.Fatalf("%d bytes compress to %d, above the bound %d", len(raw), len(stored), ZstdMaxRawLen(len(stored)))
			}
			if comp == Zstd {
				if _, err := c.Decompress(nil, stored, comp, len(raw)); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	// A frame that cannot hold the claimed length costs nothing.
	var err2 error
	n := allocated(func() { _, err2 = c.Decompress(nil, rleBomb(2, -1), Zstd, MaxBlobSize) })
	if !errors.Is(err2, ErrCorrupt) || n > 1024 {
		t.Fatalf("14-byte frame claiming %d bytes: %v, allocated %d", MaxBlobSize, err2, n)
	}
}

// wordsData returns n bytes of text-like content: words from a small
// vocabulary in a pseudo-random order, which zstd compresses several times.
func wordsData(seed uint64, n int) []byte {
	words := strings.Fields("func return if else for range var const type struct interface map chan go defer select case default package import error nil true false")
	r := rand.New(rand.NewPCG(seed, seed))
	var b []byte
	for len(b) < n {
		b = append(b, words[r.IntN(len(words))]...)
		b = append(b, " \n\t("[r.IntN(4)])
	}
	return b[:n]
}

func TestLooksIncompressible(t *testing.T) {
	c, err := NewCodec(int(DefaultLevel))
	if err != nil {
		t.Fatal(err)
	}
	const n = 1 << 20
	random := randomData(11, n)
	// Text in one quarter of random bytes: the sample sees it.
	mixed := bytes.Clone(random)
	copy(mixed[n/2:], wordsData(12, n/4))
	cases := []struct {
		name string
		data []byte
		want bool
	}{
		{"random", random, true},
		{"text", wordsData(13, n), false},
		{"random with text in a quarter", mixed, false},
		{"zeros", make([]byte, n), false},
		// Too small to sample: always compressed.
		{"small random", random[:sampleMinLen-1], false},
		{"smallest sampled", random[:sampleMinLen], true},
	}
	var scratch []byte
	for _, tc := range cases {
		var got bool
		got, scratch = c.LooksIncompressible(tc.data, scratch)
		if got != tc.want {
			t.Errorf("%s: LooksIncompressible = %v, want %v", tc.name, got, tc.want)
		}
		// Whatever the sample says, Compress agrees on what it stores
		// for these: raw exactly where the sample said incompressible.
		if _, comp := c.Compress(nil, tc.data); len(tc.data) >= sampleMinLen && (comp == Raw) != tc.want {
			t.Errorf("%s: Compress stored it as %d, the sample said incompressible %v", tc.name, comp, tc.want)
		}
	}
	// The sample reuses its scratch: nothing the size of a span is
	// allocated per call (the encoder's own bookkeeping takes a few
	// hundred bytes).
	if a := allocated(func() {
		for range 10 {
			_, scratch = c.LooksIncompressible(random, scratch)
		}
	}); a > 10*(sampleSpan/4) {
		t.Errorf("10 samples allocated %d bytes", a)
	}
}

// BenchmarkIncompressible compares what Compress spends on 1 MiB chunks of
// random bytes with what the sample costs.
func BenchmarkIncompressible(b *testing.B) {
	data := randomData(14, 32<<20)
	c, _ := NewCodec(int(DefaultLevel))
	b.Run("compress", func(b *testing.B) {
		var out []byte
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			for off := 0; off < len(data); off += 1 << 20 {
				out, _ = c.Compress(out[:0], data[off:off+1<<20])
			}
		}
	})
	b.Run("sample", func(b *testing.B) {
		var scratch []byte
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			for off := 0; off < len(data); off += 1 << 20 {
				_, scratch = c.LooksIncompressible(data[off:off+1<<20], scratch)
			}
		}
	})
}
