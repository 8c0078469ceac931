package sync

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Chunk buffers start at chunkBufSize and grow only for a larger chunk: a
// backup of files whose chunks are far larger (runs of zeros, cut only at
// chunk_max_size) and far smaller must store and restore every byte, and
// hand the pool back exactly the buffers it took (put panics otherwise).
func TestBackupOfChunksLargerThanTheirBuffers(t *testing.T) {
	r, _ := newMemRepo(t)
	src := t.TempDir()
	mtime := time.Unix(1700000000, 0)
	big := make([]byte, 21<<20) // zeros: 8 MiB chunks, then the rest
	copy(big[5<<20:], genData(1, 1<<20))
	writeFile(t, filepath.Join(src, "zeros.bin"), big, 0o644, mtime)
	writeFile(t, filepath.Join(src, "mixed.bin"), genData(2, 12<<20), 0o644, mtime)
	for i := range 20 {
		writeFile(t, filepath.Join(src, "small", string(rune('a'+i))), genData(uint64(10+i), 4000+i*100), 0o644, mtime)
	}
	for range 2 { // the second backup reuses the pool's buffers on a warm repository
		doBackup(t, r, src)
	}
	snap, _, err := r.FindSnapshot(context.Background(), "ws1", "latest")
	must(t, err)
	dst := t.TempDir()
	if _, err := Restore(context.Background(), r, snap, dst, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	compareDirs(t, snapshotDir(t, src), snapshotDir(t, dst))
	got, err := os.ReadFile(filepath.Join(dst, "zeros.bin"))
	must(t, err)
	if !bytes.Equal(got, big) {
		t.Fatal("zeros.bin restored differently")
	}
}
