package chunk

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/klauspost/compress/zstd"
)

// Compression says how a blob is stored.
type Compression uint8

// Compression kinds, as recorded in pack trailers and indexes.
const (
	Raw  Compression = 0
	Zstd Compression = 1
	// ZstdGroup marks a blob stored with others of its pack in one zstd
	// frame (repo.BlobEntry.RawOffset says where in it).
	ZstdGroup Compression = 2
)

// DefaultLevel is the zstd level used unless configured otherwise. Measured
// with BenchmarkCompress on Go source: SpeedFastest compresses ~3.5x at
// several hundred MB/s per core, SpeedDefault gains little ratio at roughly
// half the speed, and zstd dominates the CPU cost of a first backup.
const DefaultLevel = zstd.SpeedFastest

// MaxBlobSize is the largest raw blob a codec from NewCodec decompresses:
// the repository format's hard cap on any blob (docs/FORMAT.md, "Limits").
// Chunkers never cut larger chunks than their Params.MaxSize; repositories
// keep that at or below this.
const MaxBlobSize = 16 << 20

// zstdOverAlloc is the spare capacity zstd's fast sequence decoder wants
// past the end of its output (klauspost/compress compressedBlockOverAlloc);
// without it the decoder falls back to its bounds-exact copies.
const zstdOverAlloc = 16

// ErrCorrupt marks stored blobs that do not decompress to what their
// location claims: a damaged or crafted frame, a length out of range.
var ErrCorrupt = errors.New("corrupt blob")

// ZstdMaxRawLen is the most that a zstd frame of stored bytes can
// decompress to: a block yields at most 128 KiB and takes at least 4 bytes
// (a run-length block), so a length above this is a lie, refused before
// anything is allocated for it.
func ZstdMaxRawLen(stored int) int { return (stored/4 + 1) << 17 }

// Codec compresses and decompresses blobs. It is safe for concurrent use.
type Codec struct {
	enc    *zstd.Encoder
	dec    *zstd.Decoder
	maxRaw int
}

// NewCodec returns a codec compressing at level (a zstd.EncoderLevel, 1..4)
// that decompresses blobs of up to MaxBlobSize bytes.
func NewCodec(level int) (*Codec, error) { return NewCodecMax(level, MaxBlobSize) }

// NewCodecMax is NewCodec for blobs of at most maxRawLen bytes (1 byte to
// 1 GiB): Decompress refuses a larger raw length before allocating, and the
// zstd decoder's own memory is bounded to twice that.
func NewCodecMax(level, maxRawLen int) (*Codec, error) {
	if level < int(zstd.SpeedFastest) || level > int(zstd.SpeedBestCompression) {
		return nil, fmt.Errorf("compression level %d out of range %d..%d", level, zstd.SpeedFastest, zstd.SpeedBestCompression)
	}
	if maxRawLen < 1 || maxRawLen > 1<<30 {
		return nil, fmt.Errorf("largest blob %d out of range 1 B..1 GiB", maxRawLen)
	}
	enc, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.EncoderLevel(level)),
		// EncodeAll takes one encoder per call from a pool of this size, so
		// the pool must match the number of goroutines that compress.
		zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)),
		zstd.WithZeroFrames(true),
		zstd.WithEncoderCRC(false), // every blob is verified by its SHA-256
		// A frame always declares its content size (otherwise not below
		// 256 bytes), which readers of group frames require; for one
		// EncodeAll the window is the input anyway.
		zstd.WithSingleSegment(true),
		// Huffman-code the literals of a block that has no matches too
		// (the fastest level skips that by default, storing such blocks
		// raw): binary and hex-like content with a skewed byte
		// distribution but few repeats stored 21 % less this way (91 ->
		// 72 MB of the generated workspace's 128 MiB build/2-cache.pack
		// in 1 MiB chunks; zstd -1 of the whole file: 78 MB), at about
		// the same speed. Readers are unaffected: it is plain zstd.
		zstd.WithAllLitEntropyCompression(true),
	)
	if err != nil {
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	dec, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(0),
		// Output goes into the caller's buffer, limited to its capacity
		// (which Decompress sets to the raw length); this is the decoder's
		// own bound on top of that.
		zstd.WithDecoderMaxMemory(uint64(max(2*maxRawLen, 1<<20))),
		zstd.WithDecodeAllCapLimit(true),
	)
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	return &Codec{enc: enc, dec: dec, maxRaw: maxRawLen}, nil
}

// Compress appends the stored form of src to dst and returns it with the
// compression used: zstd when that is smaller, otherwise raw.
func (c *Codec) Compress(dst, src []byte) ([]byte, Compression) {
	start := len(dst)
	out := c.enc.EncodeAll(src, dst)
	if len(out)-start < len(src) {
		return out, Zstd
	}
	return append(out[:start], src...), Raw
}

// Sampling for LooksIncompressible: sampleSpans spans of sampleSpan bytes,
// spread evenly over a blob of at least sampleMinLen bytes, each
// compressed as a frame of its own (1/16 of such a blob at most, 1/64 of a
// 1 MiB chunk).
const (
	sampleSpans  = 4
	sampleSpan   = 4 << 10
	sampleMinLen = 16 * sampleSpans * sampleSpan
)

// LooksIncompressible says whether src would most likely be stored raw by
// Compress, judged from a sample: src is at least 256 KiB, and each of
// the spans spread over it compresses by less than 3 %. (Each on its own:
// zstd stores a block that mixes random and text bytes raw as a whole, and
// Compress's blocks are far larger than a span.) It costs a few percent
// of Compress, which spends about as much CPU on bytes that do not
// compress as on bytes that do. The sample can miss redundancy at longer
// range than a span (such as a repeat of random bytes far apart within
// src), so a caller trusts it only where src's neighbours have proved
// incompressible (backup: earlier chunks of the same file all stored
// raw): a wrong answer costs stored size, never content. scratch is
// reused, and returned for the next call.
func (c *Codec) LooksIncompressible(src, scratch []byte) (bool, []byte) {
	if len(src) < sampleMinLen {
		return false, scratch
	}
	scratch = scratch[:0]
	step := len(src) / sampleSpans
	for i := range sampleSpans {
		off := i*step + (step-sampleSpan)/2
		scratch = c.enc.EncodeAll(src[off:off+sampleSpan], scratch[:0])
		if len(scratch) < sampleSpan-sampleSpan/32 {
			return false, scratch[:0]
		}
	}
	return true, scratch[:0]
}

// CompressFrame appends src compressed as one zstd frame, which declares
// its content size, to dst, however large the result: for a group of
// blobs (repo.PackBuilder.AddGroup), where the caller decides. It
// compresses at the codec's level, as Compress does: the repository's
// compression_level is the one knob (a group of 1 MiB of small text files
// stores ~5 % less at SpeedDefault than at SpeedFastest, for ~1.4 times
// the CPU).
func (c *Codec) CompressFrame(dst, src []byte) []byte { return c.enc.EncodeAll(src, dst) }

// Decompress appends the raw content of a stored blob to dst. rawLen is the
// expected length, at most the codec's largest blob; a different length is
// an error wrapping ErrCorrupt. It is DecompressMax with the codec's limit.
func (c *Codec) Decompress(dst, stored []byte, comp Compression, rawLen int) ([]byte, error) {
	return c.DecompressMax(dst, stored, comp, rawLen, c.maxRaw)
}

// DecompressMax appends the raw content of a stored blob to dst. rawLen is
// the expected length; it is refused before anything is allocated when it
// is negative or above maxRawLen or the codec's own limit. A zstd frame is
// decoded into exactly rawLen bytes of room: a frame that declares or
// produces a different length is refused without decoding past that room.
// Every error wraps ErrCorrupt.
func (c *Codec) DecompressMax(dst, stored []byte, comp Compression, rawLen, maxRawLen int) ([]byte, error) {
	if rawLen < 0 || rawLen > maxRawLen || rawLen > c.maxRaw {
		return nil, fmt.Errorf("%w: raw length %d out of range 0..%d", ErrCorrupt, rawLen, min(maxRawLen, c.maxRaw))
	}
	start := len(dst)
	switch comp {
	case Raw:
		if len(stored) != rawLen {
			return nil, fmt.Errorf("%w: raw blob of %d bytes, want %d", ErrCorrupt, len(stored), rawLen)
		}
		return append(dst, stored...), nil
	case Zstd:
	default:
		return nil, fmt.Errorf("%w: unknown compression %d", ErrCorrupt, comp)
	}
	if rawLen > ZstdMaxRawLen(len(stored)) {
		return nil, fmt.Errorf("%w: a zstd frame of %d bytes cannot hold %d", ErrCorrupt, len(stored), rawLen)
	}
	var h zstd.Header
	if err := h.Decode(stored); err != nil {
		return nil, fmt.Errorf("%w: zstd frame header: %v", ErrCorrupt, err)
	}
	if h.HasFCS && h.FrameContentSize != uint64(rawLen) {
		return nil, fmt.Errorf("%w: zstd frame of %d bytes, want %d", ErrCorrupt, h.FrameContentSize, rawLen)
	}
	var out []byte
	switch room := cap(dst) - start; {
	case room >= rawLen+zstdOverAlloc:
		out = dst[start : start : start+rawLen+zstdOverAlloc]
	case room >= rawLen:
		out = dst[start : start : start+rawLen] // no allocation; slower exact copies
	default:
		nd := make([]byte, start, start+rawLen+zstdOverAlloc)
		copy(nd, dst)
		dst, out = nd, nd[start:start:start+rawLen+zstdOverAlloc]
	}
	got, err := c.dec.DecodeAll(stored, out)
	if err != nil {
		return nil, fmt.Errorf("%w: zstd: %v", ErrCorrupt, err)
	}
	if len(got) != rawLen {
		return nil, fmt.Errorf("%w: decompressed length %d, want %d", ErrCorrupt, len(got), rawLen)
	}
	dst = dst[:start+rawLen]
	if rawLen > 0 && &got[0] != &dst[start] {
		copy(dst[start:], got) // not expected: the decoder stays within out
	}
	return dst, nil
}
