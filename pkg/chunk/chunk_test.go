package chunk

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

func randomData(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestIDRoundTrip(t *testing.T) {
	id := Hash([]byte("hello"))
	got, err := ParseID(id.String())
	if err != nil || got != id {
		t.Fatalf("ParseID(%s) = %v, %v", id, got, err)
	}
	if _, err := ParseID("abc"); err == nil {
		t.Fatal("short id accepted")
	}
	if _, err := ParseID(string(bytes.Repeat([]byte("zz"), 32))); err == nil {
		t.Fatal("non-hex id accepted")
	}
	if len(id.Short()) != 8 || id.IsZero() || !(ID{}).IsZero() {
		t.Fatal("Short/IsZero wrong")
	}
}

func TestChunkerIsDeterministicAndBounded(t *testing.T) {
	p, err := NewParams()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	data := randomData(1, 20<<20)
	cut := func() [][]byte {
		c := NewChunker(p)
		c.Reset(bytes.NewReader(data))
		var chunks [][]byte
		buf := make([]byte, p.MaxSize)
		for {
			d, err := c.Next(buf)
			if err == io.EOF {
				return chunks
			}
			if err != nil {
				t.Fatal(err)
			}
			chunks = append(chunks, bytes.Clone(d))
		}
	}
	a, b := cut(), cut()
	if len(a) != len(b) || len(a) < 3 {
		t.Fatalf("got %d and %d chunks", len(a), len(b))
	}
	var joined []byte
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			t.Fatalf("chunk %d differs between runs", i)
		}
		if i < len(a)-1 && (uint(len(a[i])) < p.MinSize || uint(len(a[i])) > p.MaxSize) {
			t.Fatalf("chunk %d has size %d outside [%d,%d]", i, len(a[i]), p.MinSize, p.MaxSize)
		}
		joined = append(joined, a[i]...)
	}
	if !bytes.Equal(joined, data) {
		t.Fatal("chunks do not add up to the input")
	}
}

func TestChunkerResyncsAfterEdit(t *testing.T) {
	p, _ := NewParams()
	data := randomData(2, 16<<20)
	edited := bytes.Clone(data)
	copy(edited[8<<20:], randomData(3, 1<<20)) // change 1 MiB in the middle
	ids := func(d []byte) map[ID]bool {
		c := NewChunker(p)
		c.Reset(bytes.NewReader(d))
		m := map[ID]bool{}
		buf := make([]byte, p.MaxSize)
		for {
			ch, err := c.Next(buf)
			if err == io.EOF {
				return m
			}
			m[Hash(ch)] = true
		}
	}
	a, b := ids(data), ids(edited)
	changed := 0
	for id := range b {
		if !a[id] {
			changed++
		}
	}
	if changed > 4 {
		t.Fatalf("1 MiB edit changed %d of %d chunks", changed, len(b))
	}
}

func TestParamsValidate(t *testing.T) {
	p, _ := NewParams()
	bad := p
	bad.MinSize, bad.MaxSize = 1<<20, 1<<10
	if bad.Validate() == nil {
		t.Fatal("min > max accepted")
	}
	bad = p
	bad.Polynomial = 4 // reducible
	if bad.Validate() == nil {
		t.Fatal("reducible polynomial accepted")
	}
}

func TestCodec(t *testing.T) {
	c, err := NewCodec(int(DefaultLevel))
	if err != nil {
		t.Fatal(err)
	}
	compressible := bytes.Repeat([]byte("func main() { fmt.Println(\"hello\") }\n"), 1000)
	stored, comp := c.Compress(nil, compressible)
	if comp != Zstd || len(stored) >= len(compressible) {
		t.Fatalf("compressible data stored as %v, %d bytes", comp, len(stored))
	}
	raw, err := c.Decompress(nil, stored, comp, len(compressible))
	if err != nil || !bytes.Equal(raw, compressible) {
		t.Fatalf("round trip failed: %v", err)
	}
	random := randomData(4, 64<<10)
	stored, comp = c.Compress([]byte("prefix"), random)
	if comp != Raw || !bytes.Equal(stored[6:], random) || string(stored[:6]) != "prefix" {
		t.Fatalf("incompressible data not stored raw after prefix (comp %v)", comp)
	}
	if _, err := c.Decompress(nil, []byte("garbage"), Zstd, 10); err == nil {
		t.Fatal("garbage decompressed")
	}
	if _, err := c.Decompress(nil, []byte("abc"), Raw, 4); err == nil {
		t.Fatal("wrong raw length accepted")
	}
	if _, err := NewCodec(9); err == nil {
		t.Fatal("level 9 accepted")
	}
}

// sourceSample returns up to n bytes of Go source from GOROOT, the kind of
// content workspaces hold, so compression figures are realistic.
func sourceSample(b *testing.B, n int) []byte {
	var out []byte
	goroot, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		b.Fatalf("go env GOROOT: %v", err)
	}
	root := filepath.Join(strings.TrimSpace(string(goroot)), "src")
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || len(out) >= n {
			return filepath.SkipDir
		}
		if !d.IsDir() && filepath.Ext(p) == ".go" {
			data, _ := os.ReadFile(p)
			out = append(out, data...)
		}
		return nil
	})
	if len(out) < n/2 {
		b.Skip("no Go sources under GOROOT")
	}
	return out[:min(n, len(out))]
}

func BenchmarkChunker(b *testing.B) {
	p, _ := NewParams()
	data := randomData(5, 64<<20)
	c := NewChunker(p)
	buf := make([]byte, p.MaxSize)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		c.Reset(bytes.NewReader(data))
		for {
			if _, err := c.Next(buf); err == io.EOF {
				break
			}
		}
	}
}

func BenchmarkHash(b *testing.B) {
	data := randomData(6, 1<<20)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		Hash(data)
	}
}

func BenchmarkCompress(b *testing.B) {
	data := sourceSample(b, 32<<20)
	for _, lvl := range []zstd.EncoderLevel{zstd.SpeedFastest, zstd.SpeedDefault, zstd.SpeedBetterCompression} {
		b.Run(lvl.String(), func(b *testing.B) {
			c, _ := NewCodec(int(lvl))
			var out []byte
			var stored int
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				stored = 0
				for off := 0; off < len(data); off += 1 << 20 {
					out, _ = c.Compress(out[:0], data[off:min(off+1<<20, len(data))])
					stored += len(out)
				}
			}
			b.ReportMetric(float64(len(data))/float64(stored), "ratio")
		})
	}
}

func BenchmarkDecompress(b *testing.B) {
	data := sourceSample(b, 32<<20)
	c, _ := NewCodec(int(DefaultLevel))
	type blob struct {
		stored []byte
		comp   Compression
		n      int
	}
	var blobs []blob
	for off := 0; off < len(data); off += 1 << 20 {
		raw := data[off:min(off+1<<20, len(data))]
		s, comp := c.Compress(nil, raw)
		blobs = append(blobs, blob{s, comp, len(raw)})
	}
	var out []byte
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		for _, bl := range blobs {
			out, _ = c.Decompress(out[:0], bl.stored, bl.comp, bl.n)
		}
	}
}

// BenchmarkPipeline measures the whole per-byte cost of a first backup on
// one core: chunk, hash and compress.
func BenchmarkPipeline(b *testing.B) {
	data := sourceSample(b, 32<<20)
	p, _ := NewParams()
	c, _ := NewCodec(int(DefaultLevel))
	ch := NewChunker(p)
	buf := make([]byte, p.MaxSize)
	var out []byte
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		ch.Reset(bytes.NewReader(data))
		for {
			d, err := ch.Next(buf)
			if err == io.EOF {
				break
			}
			Hash(d)
			out, _ = c.Compress(out[:0], d)
		}
	}
}
