package sync

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backupd/backupd/pkg/placement"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/local"
	"github.com/backupd/backupd/pkg/storage/mem"
)

// failPuts fails every Put of a key under prefix: before the backend has
// it, or (after) once it is stored, as a lost reply or a failed directory
// sync would.
type failPuts struct {
	storage.Storage
	prefix string
	after  bool
}

var errFailed = errors.New("put failed on purpose")

func (s *failPuts) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	if !strings.Contains(key, s.prefix) {
		return s.Storage.Put(ctx, key, body, size)
	}
	if s.after {
		if err := s.Storage.Put(ctx, key, body, size); err != nil {
			return err
		}
	}
	return errFailed
}

func ownerRepo(t *testing.T, root storage.Storage) *repo.Repository {
	t.Helper()
	st, err := placement.NewPrefixPerOwner(root).Owner(context.Background(), "owner1", true)
	must(t, err)
	r, err := repo.Load(context.Background(), st, true)
	must(t, err)
	return r
}

// TestInterruptedBackupsPacksAreReused: a backup that dies after storing
// its packs but before its index object (as a killed one does) wastes
// nothing: the next backup finds the packs no index names, indexes them
// from their trailers, stores no data again, and names them in its own
// index object.
func TestInterruptedBackupsPacksAreReused(t *testing.T) {
	src := t.TempDir()
	for i := range 20 {
		writeFile(t, filepath.Join(src, "d", "f"+string(rune('a'+i))), genData(uint64(i), 300<<10), 0o644, time.Unix(1e9, 0))
	}
	root := mem.New()
	r := ownerRepo(t, &failPuts{Storage: root, prefix: "/index/"})
	if _, err := Backup(context.Background(), r, src, BackupOptions{Owner: "owner1", Workspace: "ws1"}); !errors.Is(err, errFailed) {
		t.Fatalf("backup with failing index writes = %v", err)
	}
	r = ownerRepo(t, root)
	rep := r.IndexReport()
	if len(rep.Adopted) == 0 || len(rep.Damaged) != 0 {
		t.Fatalf("after the interrupted backup: %+v", rep)
	}
	res := doBackup(t, r, src)
	if st := res.Snapshot.Stats; st.NewBytes != 0 || st.Bytes != 20*300<<10 {
		t.Fatalf("the next backup stored %d new bytes of %d: the interrupted one's packs were not reused", st.NewBytes, st.Bytes)
	}
	r = ownerRepo(t, root)
	if rep := r.IndexReport(); len(rep.Adopted) != 0 {
		t.Fatalf("the packs are still in no index object: %d", len(rep.Adopted))
	}
	chk, err := r.Check(context.Background(), true)
	must(t, err)
	if len(chk.Problems) != 0 || len(chk.Warnings) != 0 {
		t.Fatalf("check: %q %q", chk.Problems, chk.Warnings)
	}
	restoreAndCompare(t, r, src)
}

func restoreAndCompare(t *testing.T, r *repo.Repository, src string) {
	t.Helper()
	dst := t.TempDir()
	_, err := Restore(context.Background(), r, latest(t, r), dst, RestoreOptions{})
	must(t, err)
	compareDirs(t, snapshotDir(t, src), snapshotDir(t, dst))
}

// TestDamagedIndexObject: one damaged index object does not stop backup,
// restore or check of the owner; check names it; repair index replaces it
// and check is clean again.
func TestDamagedIndexObject(t *testing.T) {
	src := t.TempDir()
	makeTree(t, src)
	t.Cleanup(func() { chmodTreeWritable(src) })
	root := mem.New()
	r := ownerRepo(t, root)
	doBackup(t, r, src)
	writeFile(t, filepath.Join(src, "later"), []byte("a second backup"), 0o644, time.Unix(1e9, 0))
	doBackup(t, r, src)
	ctx := context.Background()
	var keys []string
	must(t, root.List(ctx, "owner1/index/", func(oi storage.ObjectInfo) error { keys = append(keys, oi.Key); return nil }))
	if len(keys) != 2 {
		t.Fatalf("%d index objects", len(keys))
	}
	must(t, root.Put(ctx, keys[0], bytes.NewReader([]byte("BKPDIX01 garbage")), 16))

	r = ownerRepo(t, root)
	if rep := r.IndexReport(); len(rep.Damaged) != 1 || !strings.Contains(rep.Damaged[0].String(), strings.TrimPrefix(keys[0], "owner1/")) || len(rep.Adopted) == 0 {
		t.Fatalf("report: %+v", rep)
	}
	restoreAndCompare(t, r, src)
	chk, err := r.Check(ctx, false)
	must(t, err)
	if len(chk.Problems) != 1 || !strings.Contains(chk.Problems[0], "repair index") {
		t.Fatalf("check: %q", chk.Problems)
	}
	var warned atomic.Int64
	if _, err := Backup(ctx, r, src, BackupOptions{Owner: "owner1", Workspace: "ws1", Warn: func(string, error) { warned.Add(1) }}); err != nil {
		t.Fatalf("backup with a damaged index object: %v", err)
	}

	r = ownerRepo(t, root)
	fix, err := r.RepairIndex(ctx, false)
	must(t, err)
	// The damaged object is deleted, or, when the packs it named are
	// exactly those indexed again, written again intact under its name.
	if fix.IndexesDeleted+fix.IndexesWritten == 0 && len(r.IndexReport().Damaged) != 0 || len(fix.BadPacks) != 0 {
		t.Fatalf("repair: %+v", fix)
	}
	r = ownerRepo(t, root)
	chk, err = r.Check(ctx, true)
	must(t, err)
	if len(chk.Problems) != 0 || len(chk.Warnings) != 0 {
		t.Fatalf("check after repair: %q %q", chk.Problems, chk.Warnings)
	}
	restoreAndCompare(t, r, src)

	// Rebuilt from every trailer: one index object for everything.
	fix, err = r.RepairIndex(ctx, true)
	must(t, err)
	keys = keys[:0]
	must(t, root.List(ctx, "owner1/index/", func(oi storage.ObjectInfo) error { keys = append(keys, oi.Key); return nil }))
	if fix.IndexesWritten != 1 || len(keys) != 1 {
		t.Fatalf("repair index --read-all-packs: %+v, %d index objects left", fix, len(keys))
	}
	restoreAndCompare(t, ownerRepo(t, root), src)
}

// TestDamagedLatestSnapshot: the next backup takes the newest readable
// snapshot as its parent (and reads nothing unchanged again), with a
// warning naming the damaged one.
func TestDamagedLatestSnapshot(t *testing.T) {
	src := t.TempDir()
	for i := range 10 {
		writeFile(t, filepath.Join(src, "f"+string(rune('a'+i))), genData(uint64(i), 2000), 0o644, time.Unix(1e9, 0))
	}
	old := racyWindow // trust metadata at once (see TestUnchangedFilesAreNotRead)
	racyWindow = 0
	t.Cleanup(func() { racyWindow = old })
	ctx := context.Background()
	for _, force := range []bool{false, true} {
		root := mem.New()
		r := ownerRepo(t, root)
		first := doBackup(t, r, src)
		second := doBackup(t, r, src)
		var key string
		must(t, root.List(ctx, "owner1/snapshots/ws1/", func(oi storage.ObjectInfo) error {
			if strings.HasSuffix(oi.Key, second.SnapshotID.String()) {
				key = oi.Key
			}
			return nil
		}))
		must(t, root.Put(ctx, key, bytes.NewReader([]byte("{}")), 2))
		var warnings []string
		res, err := Backup(ctx, ownerRepo(t, root), src, BackupOptions{Owner: "owner1", Workspace: "ws1", Force: force,
			Warn: func(p string, err error) { warnings = append(warnings, p+": "+err.Error()) }})
		must(t, err)
		if res.Snapshot.Parent != first.SnapshotID.String() {
			t.Fatalf("force=%v: parent %q, want the first snapshot", force, res.Snapshot.Parent)
		}
		if !force && res.Snapshot.Stats.UnchangedFiles != 10 {
			t.Fatalf("files read again: %+v", res.Snapshot.Stats)
		}
		if len(warnings) != 1 || !strings.Contains(warnings[0], second.SnapshotID.String()) {
			t.Fatalf("force=%v: warnings %q", force, warnings)
		}
	}
}

// TestSnapshotStoredDespiteAnError: a snapshot write that fails after the
// object is in place (a lost reply, a directory fsync failing after the
// rename) is a backup that has its snapshot, reported with a warning; one
// that fails before is a failed backup with no snapshot.
func TestSnapshotStoredDespiteAnError(t *testing.T) {
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "f"), []byte("x"), 0o644, time.Unix(1e9, 0))
	for _, after := range []bool{true, false} {
		root := mem.New()
		r := ownerRepo(t, &failPuts{Storage: root, prefix: "/snapshots/", after: after})
		var warned []error
		res, err := Backup(context.Background(), r, src, BackupOptions{Owner: "owner1", Workspace: "ws1", Warn: func(_ string, err error) { warned = append(warned, err) }})
		refs, lerr := ownerRepo(t, root).ListSnapshots(context.Background(), "ws1")
		must(t, lerr)
		if after {
			if err != nil || len(refs) != 1 || refs[0].ID != res.SnapshotID || len(warned) != 1 || !errors.Is(warned[0], repo.ErrSnapshotUnconfirmed) {
				t.Fatalf("failure after the write: %v, %d snapshots, warnings %v", err, len(refs), warned)
			}
		} else if !errors.Is(err, errFailed) || len(refs) != 0 {
			t.Fatalf("failure before the write: %v, %d snapshots", err, len(refs))
		}
	}
}

// TestBackupCleansDeadUploads: temporary files an interrupted upload left
// in a local store are removed by the next backup.
func TestBackupCleansDeadUploads(t *testing.T) {
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "f"), []byte("x"), 0o644, time.Unix(1e9, 0))
	store := t.TempDir()
	root := localStore(t, store)
	doBackup(t, ownerRepo(t, root), src)
	dead := filepath.Join(store, "owner1", "data", "ab", ".tmp-123456")
	must(t, os.MkdirAll(filepath.Dir(dead), 0o700))
	must(t, os.WriteFile(dead, []byte("half a pack"), 0o600))
	old := time.Now().Add(-time.Minute)
	must(t, os.Chtimes(dead, old, old))
	doBackup(t, ownerRepo(t, root), src)
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Fatalf("the dead upload's temporary file survived the next backup: %v", err)
	}
}

func localStore(t *testing.T, dir string) storage.Storage {
	t.Helper()
	s, err := local.New(dir)
	must(t, err)
	return s
}
