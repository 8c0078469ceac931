package chunk

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
	"testing/iotest"

	"github.com/restic/chunker"
)

// resticCuts returns the chunk lengths restic/chunker cuts data into.
func resticCuts(t testing.TB, p Params, data []byte) []int {
	t.Helper()
	c := chunker.NewWithBoundaries(bytes.NewReader(data), p.Polynomial, p.MinSize, p.MaxSize)
	c.SetAverageBits(p.AverageBits)
	var cuts []int
	buf := make([]byte, p.MaxSize)
	for {
		ch, err := c.Next(buf)
		if err == io.EOF {
			return cuts
		}
		if err != nil {
			t.Fatal(err)
		}
		cuts = append(cuts, int(ch.Length))
	}
}

// ourCuts is resticCuts for Chunker, reading through r (data's reader,
// perhaps one of short reads) into buffers of capacity bufCap, and checks
// that the chunks join up to data.
func ourCuts(t testing.TB, c *Chunker, data []byte, r io.Reader, bufCap int) []int {
	t.Helper()
	c.Reset(r)
	var cuts []int
	var joined []byte
	buf := make([]byte, 0, bufCap)
	for {
		ch, err := c.Next(buf)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if bufCap >= readStep && len(ch) <= cap(buf) && len(ch) > 0 && &ch[0] != &buf[:1][0] {
			t.Fatalf("a chunk of %d bytes, within the buffer's %d, came in another buffer", len(ch), cap(buf))
		}
		cuts = append(cuts, len(ch))
		joined = append(joined, ch...)
	}
	if !bytes.Equal(joined, data) {
		t.Fatalf("chunks of %d bytes in all do not join up to the %d of input", len(joined), len(data))
	}
	return cuts
}

// lowEntropy returns n bytes of few distinct values in long runs: many
// windows alike, so cuts are rare and the maximum size cuts too.
func lowEntropy(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 3))
	b := make([]byte, n)
	for i := 0; i < n; {
		run := 1 + r.IntN(300)
		v := byte(r.IntN(3))
		for ; run > 0 && i < n; run-- {
			b[i] = v
			i++
		}
	}
	return b
}

// TestChunkerIsRestics: the chunker cuts where restic/chunker does, for
// default and small parameters, sizes around the bounds, data that cuts
// often or only at the maximum, reads of any length and buffers of any
// size; Reset starts the next stream afresh.
func TestChunkerIsRestics(t *testing.T) {
	def, err := NewParams()
	if err != nil {
		t.Fatal(err)
	}
	small := def
	small.MinSize, small.MaxSize, small.AverageBits = 64, 8<<10, 10
	tight := def
	tight.MinSize, tight.MaxSize, tight.AverageBits = 4<<10, 4<<10, 12
	for _, tc := range []struct {
		name string
		p    Params
		data []byte
	}{
		{"default, random", def, randomData(31, 16<<20)},
		{"default, low entropy", def, lowEntropy(32, 12<<20)},
		{"default, zeros", def, make([]byte, 17<<20)},
		{"default, min-1", def, randomData(33, DefaultMinSize-1)},
		{"default, min", def, randomData(34, DefaultMinSize)},
		{"default, min+1", def, randomData(35, DefaultMinSize+1)},
		{"default, max", def, make([]byte, DefaultMaxSize)},
		{"default, max+1", def, make([]byte, DefaultMaxSize+1)},
		{"default, empty", def, nil},
		{"small, random", small, randomData(36, 3<<20)},
		{"small, low entropy", small, lowEntropy(37, 2<<20)},
		{"small, one byte", small, []byte{7}},
		{"min equals max", tight, randomData(38, 1<<20+123)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := resticCuts(t, tc.p, tc.data)
			c := NewChunker(tc.p)
			readers := map[string]func() io.Reader{
				"whole":     func() io.Reader { return bytes.NewReader(tc.data) },
				"half":      func() io.Reader { return iotest.HalfReader(bytes.NewReader(tc.data)) },
				"data+eof":  func() io.Reader { return iotest.DataErrReader(bytes.NewReader(tc.data)) },
				"irregular": func() io.Reader { return &shortReader{r: bytes.NewReader(tc.data), rng: rand.New(rand.NewPCG(9, 9))} },
			}
			for rname, mk := range readers {
				for _, bufCap := range []int{0, 100, int(tc.p.MinSize), 3 << 20, int(tc.p.MaxSize)} {
					got := ourCuts(t, c, tc.data, mk(), bufCap)
					if !equalInts(got, want) {
						t.Fatalf("%s reads, buffers of %d: %d chunks %v, restic/chunker's %d %v", rname, bufCap, len(got), head(got), len(want), head(want))
					}
				}
			}
		})
	}
}

// TestChunkerMatchesResticOnManyPolynomials: the tables are right for
// any polynomial a repository may have drawn.
func TestChunkerMatchesResticOnManyPolynomials(t *testing.T) {
	data := randomData(40, 2<<20)
	for i := range 20 {
		pol, err := chunker.RandomPolynomial()
		if err != nil {
			t.Fatal(err)
		}
		p := Params{Polynomial: pol, MinSize: 1 << 10, MaxSize: 64 << 10, AverageBits: 12}
		want := resticCuts(t, p, data)
		if got := ourCuts(t, NewChunker(p), data, bytes.NewReader(data), 8<<10); !equalInts(got, want) {
			t.Fatalf("polynomial %d (%v): %d chunks, restic/chunker's %d", i, pol, len(got), len(want))
		}
	}
}

// TestChunkerErrors: a read error is returned as it is; a polynomial of a
// degree restic/chunker refuses is refused too, as is one in Validate.
func TestChunkerErrors(t *testing.T) {
	p, _ := NewParams()
	boom := errors.New("boom")
	c := NewChunker(p)
	c.Reset(io.MultiReader(bytes.NewReader(randomData(41, 700<<10)), iotest.ErrReader(boom)))
	if _, err := c.Next(nil); !errors.Is(err, boom) {
		t.Fatalf("Next over a failing reader: %v, want %v", err, boom)
	}
	for _, pol := range []chunker.Pol{0x3, 0x13, 1<<60 | 1} { // degrees 1, 4, 60
		bad := p
		bad.Polynomial = pol
		c := NewChunker(bad)
		c.Reset(bytes.NewReader(make([]byte, 10)))
		if _, err := c.Next(nil); err == nil {
			t.Errorf("polynomial of degree %d: no error", pol.Deg())
		}
		if bad.Validate() == nil {
			t.Errorf("Validate accepted a polynomial of degree %d", pol.Deg())
		}
	}
}

// FuzzChunkerIsRestics compares the two chunkers on any input, with small
// parameters so that an input cuts many times.
func FuzzChunkerIsRestics(f *testing.F) {
	f.Add(randomData(42, 5000), uint16(64), uint16(2000), uint8(8))
	f.Add(make([]byte, 3000), uint16(100), uint16(100), uint8(6))
	pol := chunker.Pol(0x3DA3358B4DC173)
	f.Fuzz(func(t *testing.T, data []byte, minSize, maxSize uint16, bits uint8) {
		p := Params{Polynomial: pol, MinSize: max(64, uint(minSize)), AverageBits: 1 + int(bits%12)}
		p.MaxSize = max(p.MinSize, uint(maxSize))
		want := resticCuts(t, p, data)
		if got := ourCuts(t, NewChunker(p), data, iotest.HalfReader(bytes.NewReader(data)), 100); !equalInts(got, want) {
			t.Fatalf("%d chunks %v, restic/chunker's %d %v", len(got), head(got), len(want), head(want))
		}
	})
}

type shortReader struct {
	r   io.Reader
	rng *rand.Rand
}

func (s *shortReader) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1+s.rng.IntN(min(len(p), 70<<10))]
	}
	return s.r.Read(p)
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func head(a []int) []int { return a[:min(len(a), 8)] }

// BenchmarkResticChunker is BenchmarkChunker for restic/chunker, for
// comparison.
func BenchmarkResticChunker(b *testing.B) {
	p, _ := NewParams()
	data := randomData(5, 64<<20)
	c := chunker.NewWithBoundaries(nil, p.Polynomial, p.MinSize, p.MaxSize)
	buf := make([]byte, p.MaxSize)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		c.ResetWithBoundaries(bytes.NewReader(data), p.Polynomial, p.MinSize, p.MaxSize)
		c.SetAverageBits(p.AverageBits)
		for {
			if _, err := c.Next(buf); err == io.EOF {
				break
			}
		}
	}
}

// TestTableCacheIsBounded: tables of many polynomials (a daemon opening
// many repositories) do not pile up.
func TestTableCacheIsBounded(t *testing.T) {
	for range tableCacheMax + 10 {
		pol, err := chunker.RandomPolynomial()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tablesFor(pol); err != nil {
			t.Fatal(err)
		}
	}
	tableCache.Lock()
	n := len(tableCache.m)
	tableCache.Unlock()
	if n > tableCacheMax {
		t.Fatalf("%d tables cached, want at most %d", n, tableCacheMax)
	}
}
