package sync

import (
	"context"
	"encoding/binary"
	"slices"
	"testing"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/repo"
)

// TestSplitIndexEvery: the parts a backup writes as it goes hold exactly
// n blobs each but the last, and together every blob once, in order.
func TestSplitIndexEvery(t *testing.T) {
	var packs []repo.PackIndex
	var want []repo.BlobEntry
	for i, n := range []int{3, 10, 1, 7, 4} {
		p := repo.PackIndex{Pack: chunk.Hash([]byte{byte(i)})}
		for j := range n {
			p.Blobs = append(p.Blobs, repo.BlobEntry{ID: chunk.Hash([]byte{byte(i), byte(j)}), Offset: uint32(j)})
		}
		packs = append(packs, p)
		want = append(want, p.Blobs...)
	}
	parts := splitIndex(packs, 5)
	var got []repo.BlobEntry
	for k, part := range parts {
		n := 0
		for _, p := range part {
			if len(p.Blobs) == 0 || p.Blobs[0].ID != chunk.Hash([]byte{byte(slices.IndexFunc(packs, func(q repo.PackIndex) bool { return q.Pack == p.Pack })), byte(p.Blobs[0].Offset)}) {
				t.Fatalf("part %d: pack %s with blobs not its own", k, p.Pack.Short())
			}
			n += len(p.Blobs)
			got = append(got, p.Blobs...)
		}
		if n == 0 || n > 5 || k < len(parts)-1 && n != 5 {
			t.Fatalf("part %d holds %d blobs", k, n)
		}
	}
	if !slices.Equal(got, want) || len(parts) != (len(want)+4)/5 {
		t.Fatalf("%d parts, blobs %v", len(parts), got)
	}
}

// TestPackOfSmallBlobsFitsItsBuffer: a pack of many small blobs is closed
// before its trailer outgrows the pool's buffer, so that Finish never
// copies the pack into a larger one.
func TestPackOfSmallBlobsFitsItsBuffer(t *testing.T) {
	const size = 4 << 20
	p := newPacker(repo.DataBlob, size, 0, newBufferPool(2, size+packSlack), false)
	uploads := make(chan finishedPack)
	done := make(chan struct{})
	packs := 0
	go func() {
		defer close(done)
		for fp := range uploads {
			if cap(fp.data) != size+packSlack {
				t.Errorf("pack of %d blobs in a buffer of %d bytes, want %d", len(fp.entries), cap(fp.data), size+packSlack)
			}
			packs++
			fp.pool.put(fp.data[:0])
		}
	}()
	var st backupStats
	blob := make([]byte, 300)
	for i := range 40_000 {
		binary.LittleEndian.PutUint64(blob, uint64(i))
		if err := p.add(context.Background(), uploads, chunk.Hash(blob), chunk.Raw, blob, len(blob), &st); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.flush(context.Background(), uploads); err != nil {
		t.Fatal(err)
	}
	close(uploads)
	<-done
	if packs < 3 {
		t.Fatalf("%d packs", packs)
	}
}
