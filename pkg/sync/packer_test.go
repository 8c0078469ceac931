package sync

import (
	"context"
	"encoding/binary"
	"testing"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/repo"
)

// TestPackerClosesPacksAtTheBlobLimit: tiny blobs close a pack at
// repo.MaxPackBlobs, long before its size is reached, so that every pack's
// trailer stays readable.
func TestPackerClosesPacksAtTheBlobLimit(t *testing.T) {
	p := &packer{typ: repo.DataBlob, size: 16 << 20, pool: newBufferPool(2, 16<<20)}
	uploads := make(chan finishedPack)
	var counts []int
	done := make(chan struct{})
	go func() {
		for fp := range uploads {
			counts = append(counts, len(fp.entries))
			if _, err := repo.ParsePackTrailer(fp.data[len(fp.data)-repo.PackTrailerReadSize(len(fp.entries)):], int64(len(fp.data))); err != nil {
				t.Errorf("pack of %d blobs: %v", len(fp.entries), err)
			}
			fp.pool.put(fp.data[:0])
		}
		close(done)
	}()
	var st backupStats
	var b [8]byte
	for i := range repo.MaxPackBlobs + 10 {
		binary.LittleEndian.PutUint64(b[:], uint64(i))
		if err := p.add(context.Background(), uploads, chunk.Hash(b[:]), chunk.Raw, b[:], len(b), &st); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.flush(context.Background(), uploads); err != nil {
		t.Fatal(err)
	}
	close(uploads)
	<-done
	if len(counts) != 2 || counts[0] != repo.MaxPackBlobs || counts[1] != 10 {
		t.Fatalf("packs of %v blobs, want [%d 10]", counts, repo.MaxPackBlobs)
	}
}
