package sync

import (
	"cmp"
	"context"
	"io"
	"path/filepath"
	"slices"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/mem"
)

// rewriteOnRead rewrites every pack (data and tree) the first time a
// restore reads a range of data, as a prune's repack would: the same blobs in new packs
// (in reverse order after a salt blob, so new ids), a new index naming them, the old packs
// and index objects deleted; then it lets the read go to the old pack,
// which is gone.
type rewriteOnRead struct {
	storage.Storage
	t    *testing.T
	once gosync.Once
	done bool
}

func (s *rewriteOnRead) Get(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	if strings.Contains(key, "/data/") && n >= 0 { // a ranged read: data, not a whole tree pack
		s.once.Do(func() { s.rewrite(ctx); s.done = true })
	}
	return s.Storage.Get(ctx, key, off, n)
}

func (s *rewriteOnRead) rewrite(ctx context.Context) {
	t := s.t
	r := ownerRepo(t, s.Storage)
	var oldIndex []string
	must(t, s.Storage.List(ctx, "owner1/index/", func(oi storage.ObjectInfo) error { oldIndex = append(oldIndex, oi.Key); return nil }))
	var fresh []repo.PackIndex
	for id, blobs := range r.Index().Packs() {
		data, err := storage.ReadAll(ctx, s.Storage, "owner1/"+repo.PackKey(id), 0, -1)
		must(t, err)
		// Blobs in reverse order; a group's members stay together, in
		// their order (AddGroup).
		slices.SortFunc(blobs, func(a, b repo.BlobEntry) int {
			return cmp.Or(cmp.Compare(b.Offset, a.Offset), cmp.Compare(a.RawOffset, b.RawOffset))
		})
		pb := repo.NewPackBuilder(len(data))
		pb.AddSalt(blobs[0].Type) // a pack of one group would otherwise come out the same
		for i := 0; i < len(blobs); {
			b := blobs[i]
			stored := data[b.Offset : b.Offset+b.StoredLen]
			if b.Compression != chunk.ZstdGroup {
				pb.Add(b.ID, b.Type, b.Compression, stored, int(b.RawLen))
				i++
				continue
			}
			var members []repo.GroupMember
			for ; i < len(blobs) && blobs[i].Compression == chunk.ZstdGroup && blobs[i].Offset == b.Offset; i++ {
				members = append(members, repo.GroupMember{ID: blobs[i].ID, RawLen: blobs[i].RawLen})
			}
			pb.AddGroup(b.Type, stored, members)
		}
		packData, packID, entries := pb.Finish()
		must(t, r.SavePack(ctx, packData, packID, entries))
		fresh = append(fresh, repo.PackIndex{Pack: packID, Blobs: entries})
		must(t, s.Storage.Delete(ctx, "owner1/"+repo.PackKey(id)))
	}
	_, err := r.SaveIndex(ctx, fresh)
	must(t, err)
	for _, k := range oldIndex {
		must(t, s.Storage.Delete(ctx, k))
	}
}

// TestRestoreWithAStaleIndex (R7): packs rewritten and deleted while a
// restore reads them with the index it loaded before: it loads the index
// again and restores everything. On mem and MinIO.
func TestRestoreWithAStaleIndex(t *testing.T) {
	raceBackends(t, testRestoreWithAStaleIndex)
}

func testRestoreWithAStaleIndex(t *testing.T, root storage.Storage) {
	src := t.TempDir()
	for i := range 30 {
		writeFile(t, filepath.Join(src, "d"+string(rune('a'+i%3)), "f"+string(rune('a'+i))), genData(uint64(i), 50000+i), 0o644, time.Unix(1e9, 0))
	}
	writeFile(t, filepath.Join(src, "big"), genData(99, 3<<20), 0o644, time.Unix(1e9, 0))
	doBackup(t, ownerRepo(t, root), src)
	s := &rewriteOnRead{Storage: root, t: t}
	r := ownerRepo(t, s)
	dst := t.TempDir()
	_, err := Restore(context.Background(), r, latest(t, r), dst, RestoreOptions{})
	must(t, err)
	if !s.done {
		t.Fatal("the packs were never rewritten")
	}
	compareDirs(t, snapshotDir(t, src), snapshotDir(t, dst))

	// Rewritten again before the restore reads anything: the first tree
	// read finds its pack gone (LoadTree loads the index again).
	r = ownerRepo(t, root)
	snap := latest(t, r)
	(&rewriteOnRead{Storage: root, t: t}).rewrite(context.Background())
	dst = t.TempDir()
	_, err = Restore(context.Background(), r, snap, dst, RestoreOptions{})
	must(t, err)
	compareDirs(t, snapshotDir(t, src), snapshotDir(t, dst))
}

// TestRestoreOfASnapshotNewerThanTheIndex: a repository whose index was
// loaded before another backup wrote its snapshot (as a daemon's open
// repository, refreshed just before that backup's index object) restores
// that snapshot: it loads the index again for the snapshot's root tree.
func TestRestoreOfASnapshotNewerThanTheIndex(t *testing.T) {
	root := mem.New()
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "a", "old"), genData(1, 5000), 0o644, time.Unix(1e9, 0))
	doBackup(t, ownerRepo(t, root), src)
	stale := ownerRepo(t, root) // its index names the first snapshot's blobs only
	writeFile(t, filepath.Join(src, "b", "new"), genData(2, 7000), 0o644, time.Unix(1e9, 0))
	doBackup(t, ownerRepo(t, root), src)
	snap := latest(t, stale)
	if stale.Index().Has(snap.Tree) {
		t.Fatal("the index already names the new snapshot's root tree")
	}
	dst := t.TempDir()
	_, err := Restore(context.Background(), stale, snap, dst, RestoreOptions{})
	must(t, err)
	compareDirs(t, snapshotDir(t, src), snapshotDir(t, dst))
}
