package sync

import (
	"context"
	"encoding/binary"
	"slices"
	"testing"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/repo"
)

// TestPackerClosesPacksAtTheBlobLimit: tiny blobs close a pack at
// repo.MaxPackBlobs, long before its size is reached, so that every pack's
// trailer stays readable.
func TestPackerClosesPacksAtTheBlobLimit(t *testing.T) {
	p := newPacker(repo.DataBlob, 16<<20, 0, newBufferPool(2, 16<<20), false)
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

// TestPackerRamp: a ramping packer's first packs aim at the ramp's size,
// doubling up to the pack size; one without a ramp aims at the pack size
// from the first.
func TestPackerRamp(t *testing.T) {
	const size, blob = 16 << 20, 1 << 20
	for _, tc := range []struct {
		ramp int
		want []int // blob bytes of each pack, in MiB
	}{
		{4 << 20, []int{4, 8, 16, 16, 4}},
		{0, []int{16, 16, 16}},
		{size, []int{16, 16, 16}},
	} {
		p := newPacker(repo.DataBlob, size, tc.ramp, newBufferPool(2, size+packSlack), false)
		uploads := make(chan finishedPack)
		var got []int
		done := make(chan struct{})
		go func() {
			for fp := range uploads {
				n := 0
				for _, e := range fp.entries {
					n += int(e.StoredLen)
				}
				got = append(got, n>>20)
				fp.pool.put(fp.data[:0])
			}
			close(done)
		}()
		var st backupStats
		data := make([]byte, blob)
		for i := range 48 {
			binary.LittleEndian.PutUint64(data, uint64(i))
			if err := p.add(context.Background(), uploads, chunk.Hash(data), chunk.Raw, data, len(data), &st); err != nil {
				t.Fatal(err)
			}
		}
		if err := p.flush(context.Background(), uploads); err != nil {
			t.Fatal(err)
		}
		close(uploads)
		<-done
		if !slices.Equal(got, tc.want) {
			t.Errorf("ramp %d MiB: packs of %v MiB, want %v", tc.ramp>>20, got, tc.want)
		}
	}
}
