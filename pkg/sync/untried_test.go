package sync

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/backupd/backupd/pkg/chunk"
)

// TestIncompressibleFilesSkipCompression: once a file's first chunks were
// all stored raw, its later chunks that look incompressible are stored
// raw with no compression attempt (fileCompression); a file that stored
// any chunk compressed is compressed throughout, and compressible bytes
// after incompressible ones are still compressed. Every file restores as
// it was.
func TestIncompressibleFilesSkipCompression(t *testing.T) {
	const n = 32 << 20
	random := randomBytes(21, n)
	text := genData(22, n)
	cases := []struct {
		name string
		data []byte
		// untried: whether the random bytes skip the attempt (all but
		// the first few chunks' worth); text: where the text is (a chunk
		// wholly in it must be stored compressed).
		untried          bool
		textFrom, textTo int
	}{
		{"random", random, true, 0, 0},
		{"random then text", append(bytes.Clone(random[:20<<20]), text[:12<<20]...), true, 20 << 20, n},
		{"text then random", append(bytes.Clone(text[:8<<20]), random[:24<<20]...), false, 0, 8 << 20},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := t.TempDir()
			must(t, os.WriteFile(filepath.Join(src, "f.bin"), c.data, 0o644))
			r, _ := newMemRepo(t)
			res := doBackup(t, r, src)
			node := rootNodes(t, r, res)["f.bin"]
			var off, compressedText int
			var stored int64
			for _, id := range node.Content {
				loc, ok := r.Index().Lookup(id)
				if !ok {
					t.Fatalf("chunk %s not in the index", id.Short())
				}
				stored += int64(loc.StoredLen)
				if off >= c.textFrom && off+int(loc.RawLen) <= c.textTo {
					if loc.Compression == chunk.Raw {
						t.Errorf("a chunk of text at %d stored raw", off)
					}
					compressedText++
				}
				off += int(loc.RawLen)
			}
			switch {
			case c.untried && res.UntriedBytes == 0:
				t.Errorf("no bytes stored untried, want most of the random ones")
			case c.untried && res.UntriedBytes > int64(n-(c.textTo-c.textFrom)):
				t.Errorf("%d bytes stored untried, more than the random ones", res.UntriedBytes)
			case !c.untried && res.UntriedBytes != 0:
				t.Errorf("%d bytes stored untried in a file that compressed", res.UntriedBytes)
			}
			if c.textTo > 0 && compressedText == 0 {
				t.Fatalf("no chunk wholly of text: the case tests nothing")
			}
			t.Logf("%d chunks, %d of %d bytes untried, %d stored", len(node.Content), res.UntriedBytes, len(c.data), stored)
			dst := t.TempDir()
			if _, err := Restore(context.Background(), r, res.Snapshot, dst, RestoreOptions{}); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(filepath.Join(dst, "f.bin"))
			must(t, err)
			if !bytes.Equal(got, c.data) {
				t.Fatalf("restored %d bytes differ from the %d backed up", len(got), len(c.data))
			}
		})
	}
}

// TestFileCompressionCountsTheFirstQueued: what proves a file
// incompressible is its first chunks queued, whatever order the
// compressors finish them in. Two random chunks after a slow large one of
// text, stored raw before it, prove nothing (that race stored most of a
// file's random tail untried in TestIncompressibleFilesSkipCompression's
// "text then random", once in a full `make test` under -race); the first
// two raw do, until a compressed one.
func TestFileCompressionCountsTheFirstQueued(t *testing.T) {
	var f fileCompression
	seqs := []int{f.take(), f.take(), f.take(), f.take()}
	if !slices.Equal(seqs, []int{0, 1, 2, 3}) {
		t.Fatalf("places %v, want 0 1 2 3", seqs)
	}
	f.record(1, chunk.Raw)
	f.record(2, chunk.Raw)
	f.record(3, chunk.Raw)
	if f.proven() {
		t.Fatal("proven by chunks 1-3 while the first is not stored")
	}
	f.record(0, chunk.Zstd)
	if f.proven() {
		t.Fatal("proven with its first chunk compressed")
	}

	var g fileCompression
	g.take()
	g.take()
	g.record(1, chunk.Raw)
	g.record(0, chunk.Raw)
	if !g.proven() {
		t.Fatal("not proven by its first two chunks raw")
	}
	g.record(g.take(), chunk.Zstd)
	if g.proven() {
		t.Fatal("still proven after a chunk was compressed")
	}
	var none *fileCompression
	none.record(none.take(), chunk.Raw)
	if none.proven() {
		t.Fatal("a file too small to follow was proven")
	}
}
