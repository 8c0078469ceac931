package sync

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/backupd/backupd/pkg/chunk"
)

// TestHasherInOrder: a hasher with its goroutine and an inline one give
// the same ids, in the order the chunks were given.
func TestHasherInOrder(t *testing.T) {
	for _, inline := range []bool{false, true} {
		h := &hasher{}
		if !inline {
			h = newHasher()
		}
		for i := range 50 {
			d := randomBytes(uint64(i), 1000+i*997)
			h.start(d)
			if got := h.wait(); got != chunk.Hash(d) {
				t.Fatalf("inline %v: chunk %d hashed to %s, want %s", inline, i, got.Short(), chunk.Hash(d).Short())
			}
		}
		h.close()
	}
}

// TestChunkBuffersComeBack: whatever path a file's chunks take (cut
// afresh, resumed after unchanged chunks, resumed until a chunk that
// changed, a file that shrank, the duplicate of a file seen before, a
// grown file's tail cut first and then met again by cutting from a change
// before it or from the start; with the hasher's goroutine and inline, as
// in a checkpoint), every chunk
// buffer a backup took is back in its pool when the backup ends, and the
// content is what a forced backup reads.
func TestChunkBuffersComeBack(t *testing.T) {
	var checked int
	afterPipeline = func(b *backup) {
		checked++
		if out, free := len(b.bufs.sem), len(b.bufs.free); out != free {
			t.Errorf("%d chunk buffers handed out, %d back in the pool", out, free)
		}
	}
	defer func() { afterPipeline = nil }()
	src := t.TempDir()
	base := randomBytes(51, 20<<20)
	write := func(name string, data []byte) {
		t.Helper()
		p := filepath.Join(src, name)
		must(t, os.WriteFile(p, data, 0o644))
		must(t, os.Truncate(p, int64(len(data))))
		must(t, os.Chtimes(p, time.Unix(1e9, 0), time.Unix(int64(1e9+len(data)), 0)))
	}
	write("a", base)
	write("b", base[:9<<20])
	write("c", genData(52, 12<<20))
	write("e", base)
	write("f", base[:15<<20])
	for _, checkpoint := range []bool{false, true} {
		r, _ := newMemRepo(t)
		opts := BackupOptions{Owner: "owner1", Workspace: "ws1"}
		if checkpoint {
			opts.SetCheckpoint()
		}
		_, err := Backup(context.Background(), r, src, opts)
		must(t, err)
		grown := append(append([]byte(nil), base...), randomBytes(53, 3<<20)...)
		write("a", grown)                  // appended: resumed to the end
		write("b", randomBytes(54, 9<<20)) // rewritten: not even the first chunk matches
		mid := append([]byte(nil), base...)
		mid[10<<20] ^= 1
		write("c", mid)   // now base with one byte changed: resumes nothing of c
		write("d", grown) // a duplicate of a
		midGrown := append(append([]byte(nil), mid...), randomBytes(55, 6<<20)...)
		write("e", midGrown)                // its tail cut first, then cut again from the change until that meets it
		write("f", randomBytes(56, 22<<20)) // grown anew: its tail cut first, then cut again from the start
		res, err := Backup(context.Background(), r, src, opts)
		must(t, err)
		forced := opts
		forced.Force = true
		want, err := Backup(context.Background(), r, src, forced)
		must(t, err)
		got, wantNodes := rootNodes(t, r, res), rootNodes(t, r, want)
		for name, n := range wantNodes {
			if len(got[name].Content) != len(n.Content) || got[name].Size != n.Size {
				t.Fatalf("checkpoint %v: %s: %d chunks, %d bytes; forced %d, %d", checkpoint, name, len(got[name].Content), got[name].Size, len(n.Content), n.Size)
			}
			for i := range n.Content {
				if got[name].Content[i] != n.Content[i] {
					t.Fatalf("checkpoint %v: %s: chunk %d differs from the forced backup's", checkpoint, name, i)
				}
			}
		}
		write("a", base)
		write("b", base[:9<<20])
		write("c", genData(52, 12<<20))
		write("e", base)
		write("f", base[:15<<20])
		must(t, os.Remove(filepath.Join(src, "d")))
	}
	if checked != 6 {
		t.Fatalf("checked %d backups, want 6", checked)
	}
}
