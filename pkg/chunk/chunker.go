package chunk

import (
	"fmt"
	"io"
	"sync"

	"github.com/restic/chunker"
)

// Default chunking parameters: restic's (512 KiB minimum, 1 MiB average,
// 8 MiB maximum). Larger chunks keep the number of blobs, index entries and
// objects low for workspaces of many GB; smaller ones would dedup small edits
// more finely at the price of a bigger index.
const (
	DefaultMinSize     = 512 << 10
	DefaultMaxSize     = 8 << 20
	DefaultAverageBits = 20
)

// Params fixes how content is cut into chunks. A repository keeps one Params
// for its whole life: changing it stops deduplication against old data.
type Params struct {
	// Polynomial is the irreducible polynomial of the rolling hash, drawn at
	// random per repository.
	Polynomial chunker.Pol
	// MinSize and MaxSize bound a chunk's length; AverageBits sets the
	// expected length to 2^AverageBits.
	MinSize, MaxSize uint
	AverageBits      int
}

// NewParams draws a random polynomial and returns it with the default sizes.
func NewParams() (Params, error) {
	pol, err := chunker.RandomPolynomial()
	if err != nil {
		return Params{}, fmt.Errorf("draw chunker polynomial: %w", err)
	}
	return Params{Polynomial: pol, MinSize: DefaultMinSize, MaxSize: DefaultMaxSize, AverageBits: DefaultAverageBits}, nil
}

// Validate checks that p describes a usable chunker.
func (p Params) Validate() error {
	if !p.Polynomial.Irreducible() {
		return fmt.Errorf("chunker polynomial %v is not irreducible", p.Polynomial)
	}
	if d := p.Polynomial.Deg(); d < 8 || d > 53 {
		return fmt.Errorf("chunker polynomial %v of degree %d: want 8..53", p.Polynomial, d)
	}
	if p.MinSize < 64 || p.MaxSize < p.MinSize || p.MaxSize > 64<<20 {
		return fmt.Errorf("chunk sizes min %d, max %d out of range (64 B <= min <= max <= 64 MiB)", p.MinSize, p.MaxSize)
	}
	if p.AverageBits < 10 || p.AverageBits > 26 {
		return fmt.Errorf("chunk average bits %d out of range 10..26", p.AverageBits)
	}
	return nil
}

// Chunker cuts a stream into content-defined chunks: the chunks of
// restic/chunker for the same Params, byte for byte (TestChunkerIsRestics),
// found faster. restic's Next copies every byte from its own read buffer
// into the chunk through a 64-byte window ring; this one reads into the
// chunk's buffer and hashes the bytes where they lie, the window being the
// 64 bytes before. That rests on a property of restic's Rabin fingerprint:
// after a cut it restarts, skips MinSize-64 bytes and hashes from there, so
// wherever it may cut (MinSize bytes on) its digest is the fingerprint of
// exactly the last 64 bytes (the byte it starts with slides out as the
// 64th comes in). It is not safe for concurrent use; reuse one per
// goroutine with Reset.
type Chunker struct {
	p    Params
	tab  *tables
	err  error // the polynomial's, from NewChunker
	r    io.Reader
	eof  bool
	tail []byte // bytes read past the last cut: the next chunk's first
	over []byte // a read past a full buffer, before it grows
}

// windowSize is restic/chunker's rolling-hash window.
const windowSize = 64

// readStep is how much Next reads at a time past a chunk's MinSize. What
// it reads past a cut is copied into the next chunk's buffer, so a smaller
// step copies less and makes more reads.
const readStep = 256 << 10

// tables are restic/chunker's, for one polynomial: out[b] takes byte b out
// of the window's fingerprint, mod[i] reduces it by the polynomial after a
// byte comes in (i: the 8 bits above its degree).
type tables struct {
	out, mod [256]uint64
	shift    uint
}

// tableCache keeps the tables of the polynomials in use (one per
// repository), up to tableCacheMax of them (4 KiB each): a daemon serving
// many owners' repositories starts afresh past that.
var tableCache struct {
	sync.Mutex
	m map[chunker.Pol]*tables
}

const tableCacheMax = 256

func tablesFor(pol chunker.Pol) (*tables, error) {
	deg := pol.Deg()
	if deg < 8 || deg > 53 {
		return nil, fmt.Errorf("chunker polynomial %v of degree %d: want 8..53", pol, deg)
	}
	tableCache.Lock()
	defer tableCache.Unlock()
	if t := tableCache.m[pol]; t != nil {
		return t, nil
	}
	t := &tables{shift: uint(deg - 8)}
	for b := range 256 {
		h := chunker.Pol(b).Mod(pol)
		for range windowSize - 1 {
			h = (h << 8).Mod(pol)
		}
		t.out[b] = uint64(h)
		t.mod[b] = uint64((chunker.Pol(b) << uint(deg)).Mod(pol) | chunker.Pol(b)<<uint(deg))
	}
	if tableCache.m == nil || len(tableCache.m) >= tableCacheMax {
		tableCache.m = map[chunker.Pol]*tables{}
	}
	tableCache.m[pol] = t
	return t, nil
}

// window returns the fingerprint of w, 64 bytes.
func (t *tables) window(w []byte) uint64 {
	shift := t.shift & 63
	var d uint64
	for _, b := range w[:windowSize] {
		d = (d<<8 | uint64(b)) ^ t.mod[byte(d>>shift)]
	}
	return d
}

// laneLen is how many ends of a chunk each of findCut's two lanes
// considers at a time.
const laneLen = 16 << 10

// findCut returns the first q in [from, to] (from >= 64) where
// data[q-64:q] fingerprints to zero under mask, or 0 if none does. Each
// fingerprint depends only on its 64 bytes, so two stretches of data are
// hashed side by side: the hash's steps depend each on the one before, and
// two chains of them keep the core busier than one (BenchmarkChunker).
func (t *tables) findCut(data []byte, from, to int, mask uint64) int {
	for to-from+1 >= 2*laneLen {
		if q := t.scan2(data, from, laneLen, mask); q > 0 {
			return q
		}
		from += 2 * laneLen
	}
	return t.scan1(data, from, to, mask)
}

// scan1 is findCut in one lane.
func (t *tables) scan1(data []byte, from, to int, mask uint64) int {
	if from > to {
		return 0
	}
	d := t.window(data[from-windowSize : from])
	if d&mask == 0 {
		return from
	}
	shift := t.shift & 63
	// Each step slides one byte out and one in: the window ending at q
	// becomes the one ending at q+1. The digest stays below 2^degree, so
	// d>>shift is the byte of its top 8 bits: the conversion loses
	// nothing.
	in := data[from:to]
	out := data[from-windowSize : to-windowSize][:len(in)]
	for i, b := range in {
		d ^= t.out[out[i]]
		d = (d<<8 | uint64(b)) ^ t.mod[byte(d>>shift)]
		if d&mask == 0 {
			return from + i + 1
		}
	}
	return 0
}

// scan2 is findCut over [from, from+2n) in two lanes of n ends each.
func (t *tables) scan2(data []byte, from, n int, mask uint64) int {
	a, b := from, from+n
	da, db := t.window(data[a-windowSize:a]), t.window(data[b-windowSize:b])
	if da&mask == 0 {
		return a
	}
	hitB := db&mask == 0
	if !hitB {
		shift := t.shift & 63
		inA := data[a : a+n-1]
		inB := data[b : b+n-1][:len(inA)]
		outA, outB := data[a-windowSize : a+n-1-windowSize][:len(inA)], data[b-windowSize : b+n-1-windowSize][:len(inA)]
		for i := range inA {
			da ^= t.out[outA[i]]
			db ^= t.out[outB[i]]
			da = (da<<8 | uint64(inA[i])) ^ t.mod[byte(da>>shift)]
			db = (db<<8 | uint64(inB[i])) ^ t.mod[byte(db>>shift)]
			if da&mask == 0 {
				return a + i + 1
			}
			if db&mask == 0 {
				// A cut in lane B, unless lane A has one after i.
				if q := t.scan1(data, a+i+2, a+n-1, mask); q > 0 {
					return q
				}
				return b + i + 1
			}
		}
		return 0
	}
	if q := t.scan1(data, a+1, a+n-1, mask); q > 0 {
		return q
	}
	return b
}

// NewChunker returns a chunker for p; call Reset before the first Next.
func NewChunker(p Params) *Chunker {
	c := &Chunker{p: p}
	c.tab, c.err = tablesFor(p.Polynomial)
	return c
}

// Reset starts cutting the stream r.
func (c *Chunker) Reset(r io.Reader) {
	c.r, c.eof, c.tail = r, false, c.tail[:0]
}

// Next reads the next chunk into buf and returns it; at the end of the
// stream it returns io.EOF. A chunk longer than cap(buf) is returned in a
// new, larger buffer (of at most MaxSize), as is one cut from what was read
// past the last cut when that does not fit buf (which happens only with
// buffers under 256 KiB). A read error is returned as it is, and the chunk
// being cut is then lost.
func (c *Chunker) Next(buf []byte) ([]byte, error) {
	if c.err != nil {
		return nil, c.err
	}
	minSize, maxSize := int(c.p.MinSize), int(c.p.MaxSize)
	if minSize < windowSize || maxSize < minSize {
		return nil, fmt.Errorf("chunk sizes min %d, max %d out of range", minSize, maxSize)
	}
	data := append(buf[:0], c.tail...)
	c.tail = c.tail[:0]
	mask := uint64(1)<<uint(c.p.AverageBits) - 1
	q := minSize // the next end of a chunk to consider
	for {
		// Where a cut may be in what has been read, up to the largest
		// chunk.
		end := min(len(data), maxSize)
		if q <= end {
			if cut := c.tab.findCut(data, q, end, mask); cut > 0 {
				return c.cut(data, cut), nil
			}
			q = end + 1
		}
		if end == maxSize {
			return c.cut(data, maxSize), nil
		}
		if c.eof {
			if len(data) == 0 {
				return nil, io.EOF
			}
			return data, nil
		}
		// Read on: to MinSize at once, then a step at a time, within
		// the buffer. A full buffer grows only once more bytes have come
		// (read beside it first), so a chunk that fits buf is in buf.
		want := min(max(readStep, minSize-len(data)), maxSize-len(data))
		if len(data) < cap(data) {
			want = min(want, cap(data)-len(data))
			n, err := io.ReadFull(c.r, data[len(data):len(data)+want])
			data = data[:len(data)+n]
			if err := c.readErr(err); err != nil {
				return nil, err
			}
			continue
		}
		if cap(c.over) < readStep {
			c.over = make([]byte, readStep)
		}
		want = min(want, readStep)
		n, err := io.ReadFull(c.r, c.over[:want])
		if n > 0 {
			grown := make([]byte, len(data), min(maxSize, max(2*cap(data), len(data)+readStep)))
			copy(grown, data)
			data = append(grown, c.over[:n]...)
		}
		if err := c.readErr(err); err != nil {
			return nil, err
		}
	}
}

// readErr notes the end of the stream, and returns any other error.
func (c *Chunker) readErr(err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		c.eof = true
		return nil
	}
	return err
}

// cut keeps what data holds past n for the next chunk and returns the
// chunk, data[:n].
func (c *Chunker) cut(data []byte, n int) []byte {
	c.tail = append(c.tail[:0], data[n:]...)
	return data[:n]
}
