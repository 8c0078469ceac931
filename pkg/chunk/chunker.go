package chunk

import (
	"fmt"
	"io"

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
	if p.MinSize < 64 || p.MaxSize < p.MinSize || p.MaxSize > 64<<20 {
		return fmt.Errorf("chunk sizes min %d, max %d out of range (64 B <= min <= max <= 64 MiB)", p.MinSize, p.MaxSize)
	}
	if p.AverageBits < 10 || p.AverageBits > 26 {
		return fmt.Errorf("chunk average bits %d out of range 10..26", p.AverageBits)
	}
	return nil
}

// Chunker cuts a stream into content-defined chunks. It is not safe for
// concurrent use; reuse one per goroutine with Reset.
type Chunker struct {
	c *chunker.Chunker
	p Params
}

// NewChunker returns a chunker for p; call Reset before the first Next.
func NewChunker(p Params) *Chunker {
	c := chunker.NewWithBoundaries(nil, p.Polynomial, p.MinSize, p.MaxSize)
	c.SetAverageBits(p.AverageBits)
	return &Chunker{c: c, p: p}
}

// Reset starts cutting the stream r.
func (c *Chunker) Reset(r io.Reader) {
	c.c.ResetWithBoundaries(r, c.p.Polynomial, c.p.MinSize, c.p.MaxSize)
	c.c.SetAverageBits(c.p.AverageBits)
}

// Next reads the next chunk into buf (which should have capacity MaxSize)
// and returns it; at the end of the stream it returns io.EOF.
func (c *Chunker) Next(buf []byte) ([]byte, error) {
	ch, err := c.c.Next(buf)
	if err != nil {
		return nil, err
	}
	return ch.Data, nil
}
