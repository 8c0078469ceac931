package repo

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"slices"
	"sync"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/klauspost/compress/zstd"
)

const indexMagic = "BKPDIX01"

// PackIndex is the part of an index object that describes one pack.
type PackIndex struct {
	Pack  chunk.ID
	Blobs []BlobEntry
}

// indexEncoder compresses index objects. EncodeAll is safe for concurrent
// use: callers share its one encoder in turn. Its window is 1 MiB: the
// ids of an index do not repeat, so a larger one stores no less, and the
// encoder's history (twice the window) stays in memory for good; with the
// default 8 MiB window, the 16 MiB it held made a backup's garbage
// collector run 4.7 times as often under backupctl's memory limit (375 to
// 80 collections backing up 100,000 small files).
var indexEncoder, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(1<<20))

// Smallest encodings of an index body's entries: a pack is its id and a
// one-byte count, a blob its id, type, compression and three one-byte
// varints. Counts are checked against these before anything is allocated.
const (
	minIndexPack = chunk.IDSize + 1
	minIndexBlob = chunk.IDSize + 2 + 3
	maxIndexBlob = chunk.IDSize + 2 + 4*binary.MaxVarintLen32
)

// EncodeIndex returns the index object for packs. A writer keeps each
// object within MaxIndexBlobs and MaxIndexPacks (SplitIndex) and lists each
// pack once, so that readers accept it. Each pack's blobs are written in
// offset order.
func EncodeIndex(packs []PackIndex) []byte {
	return indexEncoder.EncodeAll(encodeIndexBody(packs), []byte(indexMagic))
}

func encodeIndexBody(packs []PackIndex) []byte {
	n := 0
	for _, p := range packs {
		n += chunk.IDSize + binary.MaxVarintLen32 + len(p.Blobs)*maxIndexBlob
	}
	body := make([]byte, 0, n)
	for _, p := range packs {
		if !slices.IsSortedFunc(p.Blobs, byOffset) {
			// Readers want each pack's blobs in pack order.
			p.Blobs = slices.SortedFunc(slices.Values(p.Blobs), byOffset)
		}
		body = append(body, p.Pack[:]...)
		body = binary.AppendUvarint(body, uint64(len(p.Blobs)))
		for _, b := range p.Blobs {
			body = append(body, b.ID[:]...)
			body = append(body, byte(b.Type), byte(b.Compression))
			body = binary.AppendUvarint(body, uint64(b.Offset))
			body = binary.AppendUvarint(body, uint64(b.StoredLen))
			body = binary.AppendUvarint(body, uint64(b.RawLen))
			if b.Compression == chunk.ZstdGroup {
				body = binary.AppendUvarint(body, uint64(b.RawOffset))
			}
		}
	}
	return body
}

func byOffset(a, b BlobEntry) int {
	return cmp.Or(cmp.Compare(a.Offset, b.Offset), cmp.Compare(a.RawOffset, b.RawOffset))
}

// sameFrame reports whether two grouped blobs are in the same frame.
func sameFrame(a, b *BlobEntry) bool {
	return a.Compression == chunk.ZstdGroup && b.Compression == chunk.ZstdGroup && a.Offset == b.Offset && a.StoredLen == b.StoredLen && a.Type == b.Type
}

// SplitIndex splits packs into parts of at most MaxIndexBlobs blobs and
// MaxIndexPacks packs, each small enough for one index object; a pack with
// more blobs than one part holds is split across parts (a reader takes the
// union). Blobs keep their order.
func SplitIndex(packs []PackIndex) [][]PackIndex {
	var parts [][]PackIndex
	var cur []PackIndex
	blobs := 0
	for _, p := range packs {
		for first := true; first || len(p.Blobs) > 0; first = false {
			if len(cur) == MaxIndexPacks || (blobs == MaxIndexBlobs && len(p.Blobs) > 0) {
				parts, cur, blobs = append(parts, cur), nil, 0
			}
			k := min(len(p.Blobs), MaxIndexBlobs-blobs)
			cur = append(cur, PackIndex{Pack: p.Pack, Blobs: p.Blobs[:k:k]})
			blobs += k
			p.Blobs = p.Blobs[k:]
		}
	}
	if len(cur) > 0 {
		parts = append(parts, cur)
	}
	return parts
}

// indexDecoders are the zstd stream decoders of DecodeIndex, one per
// concurrent call, each keeping its window buffer between calls
// (BenchmarkDecodeIndex: cheaper than a decoder per call at every size).
var indexDecoders = sync.Pool{New: func() any { return newIndexDecoder() }}

func newIndexDecoder() *zstd.Decoder {
	d, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(1), // synchronous: no goroutines
		zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxWindow(indexMaxWindow),
		zstd.WithDecoderMaxMemory(MaxIndexSize))
	if err != nil {
		panic("repo: zstd decoder: " + err.Error()) // the options are constant
	}
	return d
}

// zstdOverAlloc is the spare room zstd's fast decoder wants past its output.
const zstdOverAlloc = 16

// indexMaxWindow is the largest zstd window an index frame may ask for,
// twice what EncodeIndex's encoder uses (a stream decoder allocates its
// window); small frames may ask for less (decodeIndexWith).
const indexMaxWindow = 16 << 20

// DecodeIndex parses an index object, with data blobs of up to
// MaxDataBlobSize. Errors wrap ErrCorrupt.
func DecodeIndex(obj []byte) ([]PackIndex, error) {
	return DecodeIndexMax(obj, MaxDataBlobSize)
}

// DecodeIndexMax parses an index object of a repository whose data blobs
// are at most maxDataBlob bytes (Config.MaxBlobSize(DataBlob)). It
// decompresses the body as a stream, at most MaxIndexSize bytes of it, and
// parses entries as they come: memory is what the entries decoded so far
// take (48 bytes per blob, 56 per pack, room at most doubled as they come)
// plus the zstd window, never what a count claims. Every entry is checked
// against the format: types, compressions and lengths within the limits,
// each pack's blobs in order without overlap and within 4 GiB, each pack
// listed once, minimal varints. Errors wrap ErrCorrupt.
func DecodeIndexMax(obj []byte, maxDataBlob uint32) ([]PackIndex, error) {
	if len(obj) > MaxIndexObjectSize {
		return nil, fmt.Errorf("%w: index object of %d bytes exceeds %d", ErrCorrupt, len(obj), MaxIndexObjectSize)
	}
	if !bytes.HasPrefix(obj, []byte(indexMagic)) {
		return nil, fmt.Errorf("%w: index magic missing", ErrCorrupt)
	}
	d := indexDecoders.Get().(*zstd.Decoder)
	defer indexDecoders.Put(d)
	return decodeIndexWith(d, obj, maxDataBlob)
}

// decodeIndexWith is DecodeIndexMax with the stream decoder d.
func decodeIndexWith(d *zstd.Decoder, obj []byte, maxDataBlob uint32) ([]PackIndex, error) {
	defer d.Reset(nil) // drop the reference to obj
	frame := obj[len(indexMagic):]
	if len(frame) == 0 {
		return nil, nil // no frame: an empty body, as zstd decoders read it
	}
	// A zstd block of 128 KiB takes 4 bytes at least, so no frame of this
	// length holds more: a window claimed beyond that or indexMaxWindow
	// (which the decoder would allocate) is refused, and so is a content
	// size above MaxIndexSize. Frames after the first, which EncodeIndex
	// never writes, are bounded by indexMaxWindow and MaxIndexSize.
	var h zstd.Header
	if err := h.Decode(frame); err != nil {
		return nil, fmt.Errorf("%w: index: zstd frame header: %v", ErrCorrupt, err)
	}
	window := h.WindowSize
	if h.SingleSegment {
		window = h.FrameContentSize
	}
	if h.HasFCS && h.FrameContentSize > MaxIndexSize {
		return nil, fmt.Errorf("%w: index body of %d bytes exceeds %d", ErrCorrupt, h.FrameContentSize, MaxIndexSize)
	}
	if room := min(uint64(len(frame)/4+1)*128<<10, indexMaxWindow); window > room {
		return nil, fmt.Errorf("%w: index: zstd frame of %d bytes claims a window of %d bytes", ErrCorrupt, len(frame), window)
	}
	var x indexReader
	if h.SingleSegment {
		// The window is the whole body, which the stream decoder would
		// hold anyway: decode it in one go (fewer copies), then parse.
		body, err := d.DecodeAll(frame, make([]byte, 0, h.FrameContentSize+zstdOverAlloc))
		if err != nil {
			return nil, fmt.Errorf("%w: index: %v", ErrCorrupt, err)
		}
		x = indexReader{buf: body, r: body, read: len(body), eof: true}
	} else {
		if err := d.Reset(bytes.NewReader(frame)); err != nil {
			return nil, fmt.Errorf("%w: index: %v", ErrCorrupt, err)
		}
		buf := indexBufs.Get().(*[]byte)
		defer indexBufs.Put(buf)
		x = indexReader{src: d, buf: *buf}
	}
	var packs []PackIndex
	for {
		x.fill(chunk.IDSize + binary.MaxVarintLen64)
		if x.err != nil {
			return nil, x.err
		}
		if len(x.r) == 0 {
			if err := checkPacksUnique(packs); err != nil {
				return nil, err
			}
			return packs, nil
		}
		var p PackIndex
		if len(x.r) < minIndexPack {
			return nil, fmt.Errorf("%w: index truncated", ErrCorrupt)
		}
		copy(p.Pack[:], x.r)
		x.r = x.r[chunk.IDSize:]
		n, err := x.uvarint()
		if err != nil {
			return nil, err
		}
		if n == 0 || n > uint64(MaxIndexSize-x.offset())/minIndexBlob {
			return nil, fmt.Errorf("%w: index: pack %s with %d blobs", ErrCorrupt, p.Pack.Short(), n)
		}
		// Room for the entries whose bytes are at hand; more as they come.
		x.fill(int(min(n, 4096)) * minIndexBlob)
		if x.err != nil {
			return nil, x.err
		}
		p.Blobs = make([]BlobEntry, 0, min(n, uint64(len(x.r)/minIndexBlob)+1))
		end := uint64(0) // where the previous blob ended
		for range n {
			if len(x.r) < maxIndexBlob {
				if x.fill(maxIndexBlob); x.err != nil {
					return nil, x.err
				}
			}
			r := x.r
			if len(r) < minIndexBlob {
				return nil, fmt.Errorf("%w: index truncated", ErrCorrupt)
			}
			b := BlobEntry{ID: chunk.ID(r[:chunk.IDSize]), Type: BlobType(r[32]), Compression: chunk.Compression(r[33])}
			k, m := chunk.IDSize+2, 0
			if b.Offset, m = uvarint32(r[k:]); m > 0 {
				k += m
				if b.StoredLen, m = uvarint32(r[k:]); m > 0 {
					k += m
					b.RawLen, m = uvarint32(r[k:])
					k += m
					if m > 0 && b.Compression == chunk.ZstdGroup {
						b.RawOffset, m = uvarint32(r[k:])
						k += m
					}
				}
			}
			if m <= 0 {
				return nil, fmt.Errorf("%w: index: blob %s: varint truncated, overlong or above 32 bits", ErrCorrupt, b.ID.Short())
			}
			x.r = r[k:]
			if err := checkBlobEntry(&b, maxDataBlob); err != nil {
				return nil, fmt.Errorf("index: pack %s: %w", p.Pack.Short(), err)
			}
			if n := len(p.Blobs); n > 0 && b.Compression == chunk.ZstdGroup && sameFrame(&p.Blobs[n-1], &b) {
				// A later blob of the group before, after that one.
				if prev := &p.Blobs[n-1]; b.RawOffset < prev.RawOffset+prev.RawLen {
					return nil, fmt.Errorf("%w: index: pack %s: grouped blob %s overlaps the one before or is out of order", ErrCorrupt, p.Pack.Short(), b.ID.Short())
				}
			} else if uint64(b.Offset) < end {
				return nil, fmt.Errorf("%w: index: pack %s: blob %s overlaps the one before or is out of order", ErrCorrupt, p.Pack.Short(), b.ID.Short())
			}
			if end = uint64(b.Offset) + uint64(b.StoredLen); end > math.MaxUint32 {
				return nil, fmt.Errorf("%w: index: blob %s ends beyond 4 GiB", ErrCorrupt, b.ID.Short())
			}
			p.Blobs = appendGrow(p.Blobs, b, n)
		}
		packs = appendGrow(packs, p, math.MaxInt)
	}
}

// checkPacksUnique refuses an index that lists a pack twice (by sorting 4
// bytes per pack rather than building a set of ids).
func checkPacksUnique(packs []PackIndex) error {
	if len(packs) < 2 {
		return nil
	}
	order := make([]int32, len(packs))
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortFunc(order, func(a, b int32) int { return bytes.Compare(packs[a].Pack[:], packs[b].Pack[:]) })
	for i := 1; i < len(order); i++ {
		if p := packs[order[i]].Pack; p == packs[order[i-1]].Pack {
			return fmt.Errorf("%w: index: pack %s listed twice", ErrCorrupt, p.Short())
		}
	}
	return nil
}

// appendGrow appends v to s, doubling s's capacity when full but never
// beyond limit elements: every allocation is backed by as many elements
// parsed as it adds room for (append's smaller steps for large slices
// would allocate five times the final size in all).
func appendGrow[T any](s []T, v T, limit uint64) []T {
	if len(s) == cap(s) {
		n := min(max(2*uint64(cap(s)), 16), max(limit, uint64(len(s))+1))
		g := make([]T, len(s), n)
		copy(g, s)
		s = g
	}
	return append(s, v)
}

// indexBufs are DecodeIndex's read buffers.
var indexBufs = sync.Pool{New: func() any {
	b := make([]byte, 256<<10)
	return &b
}}

// indexReader hands out a decompressed index body in slices of a fixed
// buffer, refusing a body longer than MaxIndexSize.
type indexReader struct {
	src  io.Reader
	buf  []byte
	r    []byte // unparsed bytes, a suffix of buf's filled part
	read int    // bytes read from src so far
	eof  bool
	err  error
}

// fill makes at least k bytes available in r, unless the body ends first.
func (x *indexReader) fill(k int) {
	if len(x.r) >= k || x.eof {
		return
	}
	n := copy(x.buf, x.r)
	for empty := 0; n < len(x.buf) && !x.eof; {
		m, err := x.src.Read(x.buf[n:])
		n += m
		x.read += m
		if m == 0 {
			empty++
		}
		switch {
		case empty == 100 && err == nil:
			x.err, x.eof = fmt.Errorf("%w: index: %v", ErrCorrupt, io.ErrNoProgress), true
		case x.read > MaxIndexSize:
			x.err, x.eof = fmt.Errorf("%w: index body exceeds %d bytes", ErrCorrupt, MaxIndexSize), true
		case err == io.EOF:
			x.eof = true
		case err != nil:
			x.err, x.eof = fmt.Errorf("%w: index: %v", ErrCorrupt, err), true
		}
		if n >= k {
			break
		}
	}
	x.r = x.buf[:n]
}

// offset is how far into the body parsing is.
func (x *indexReader) offset() int { return x.read - len(x.r) }

// uvarint32 decodes a minimally encoded uvarint of at most 32 bits from the
// start of r and returns it with its length, or a length <= 0 if r holds
// none (truncated, overlong, or too large).
func uvarint32(r []byte) (uint32, int) {
	var v uint64
	for i := 0; i < len(r) && i < binary.MaxVarintLen32; i++ {
		c := r[i]
		v |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			if (c == 0 && i > 0) || v > math.MaxUint32 {
				return 0, -1
			}
			return uint32(v), i + 1
		}
	}
	return 0, 0
}

// uvarint consumes a minimally encoded uvarint.
func (x *indexReader) uvarint() (uint64, error) {
	v, k := binary.Uvarint(x.r)
	if k <= 0 {
		return 0, fmt.Errorf("%w: index truncated or varint overflow", ErrCorrupt)
	}
	if k > 1 && x.r[k-1] == 0 {
		return 0, fmt.Errorf("%w: index: overlong varint", ErrCorrupt)
	}
	x.r = x.r[k:]
	return v, nil
}
