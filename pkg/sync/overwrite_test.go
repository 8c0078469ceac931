package sync

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/backupd/backupd/pkg/placement"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/mem"
)

// recordingStorage records the keys of every Get.
type recordingStorage struct {
	storage.Storage
	mu   gosync.Mutex
	gets []string
}

func (s *recordingStorage) Get(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	s.mu.Lock()
	s.gets = append(s.gets, key)
	s.mu.Unlock()
	return s.Storage.Get(ctx, key, off, n)
}

// packGets returns how many Gets since the last call read a pack.
func (s *recordingStorage) packGets() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, k := range s.gets {
		if strings.Contains(k, "data/") {
			n++
		}
	}
	s.gets = nil
	return n
}

func restoreOver(t testing.TB, r *repo.Repository, target string, opts RestoreOptions) *RestoreResult {
	t.Helper()
	snap, _, err := r.FindSnapshot(context.Background(), "ws1", "latest")
	must(t, err)
	opts.Overwrite = true
	res, err := Restore(context.Background(), r, snap, target, opts)
	must(t, err)
	return res
}

func TestRestoreOverIdenticalDirReadsNoPack(t *testing.T) {
	src := t.TempDir()
	makeTree(t, src)
	t.Cleanup(func() { chmodTreeWritable(src) })
	rec := &recordingStorage{Storage: mem.New()}
	st, err := placement.NewPrefixPerOwner(rec).Owner(context.Background(), "owner1", true)
	must(t, err)
	cacheDir := t.TempDir()
	load := func() *repo.Repository {
		r, err := repo.LoadCached(context.Background(), st, true, cacheDir, 0)
		must(t, err)
		return r
	}
	doBackup(t, load(), src)
	dst := t.TempDir()
	t.Cleanup(func() { chmodTreeWritable(dst) })
	full, err := restoreLatest(t, load(), dst)
	must(t, err)
	if rec.packGets() == 0 || full.PackBytes == 0 {
		t.Fatal("the first restore read no pack: the count below proves nothing")
	}
	// The trees come from the node cache, which the backup filled; the
	// content is all there already.
	for _, verify := range []bool{false, true} {
		res := restoreOver(t, load(), dst, RestoreOptions{Verify: verify, Delete: true})
		if n := rec.packGets(); n != 0 || res.PackBytes != 0 {
			t.Fatalf("verify=%v: restore over an identical directory read %d packs, %d bytes", verify, n, res.PackBytes)
		}
		if res.Unchanged != full.Files || res.Deleted != 0 {
			t.Fatalf("verify=%v: unchanged %d of %d files, deleted %d", verify, res.Unchanged, full.Files, res.Deleted)
		}
		compareDirs(t, snapshotDir(t, src), snapshotDir(t, dst))
	}
}

func TestRestoreOverChangedDir(t *testing.T) {
	src := t.TempDir()
	makeTree(t, src)
	t.Cleanup(func() { chmodTreeWritable(src) })
	r, _ := newMemRepo(t)
	doBackup(t, r, src)
	dst := t.TempDir()
	t.Cleanup(func() { chmodTreeWritable(dst) })
	full, err := restoreLatest(t, r, dst)
	must(t, err)
	outside := t.TempDir()
	victim := filepath.Join(outside, "victim")
	writeFile(t, victim, []byte("outside the target"), 0o644, time.Unix(5, 0))
	linkTarget := filepath.Join(outside, "linked")
	writeFile(t, linkTarget, []byte("hard-linked from the target"), 0o644, time.Unix(5, 0))

	big := filepath.Join(dst, "sizes", "fxxxxxxxxx") // 21 MiB
	f, err := os.OpenFile(big, os.O_WRONLY|os.O_APPEND, 0)
	must(t, err)
	_, err = f.Write([]byte("appended"))
	must(t, err)
	must(t, f.Close())
	// Same size and mtime, other content: only --verify sees it.
	sneaky := filepath.Join(dst, "sizes", "fxx")
	fi, err := os.Stat(sneaky)
	must(t, err)
	writeFile(t, sneaky, []byte(strings.Repeat("Z", int(fi.Size()))), 0o644, fi.ModTime())
	// Entries of the wrong kind, one a symlink out of the target where the
	// snapshot has a file, one a hard link to a file outside.
	must(t, os.Remove(filepath.Join(dst, "perm", "exec")))
	must(t, os.Symlink(victim, filepath.Join(dst, "perm", "exec")))
	must(t, os.Remove(filepath.Join(dst, "dup", "one")))
	must(t, os.Link(linkTarget, filepath.Join(dst, "dup", "one")))
	must(t, os.RemoveAll(filepath.Join(dst, "links")))
	writeFile(t, filepath.Join(dst, "links"), []byte("a file where a directory was"), 0o644, time.Unix(5, 0))
	must(t, os.RemoveAll(filepath.Join(dst, "empty")))
	must(t, os.Symlink(outside, filepath.Join(dst, "empty")))
	must(t, os.Chmod(filepath.Join(dst, "names", "日本語"), 0o666))
	must(t, os.Remove(filepath.Join(dst, "many", "small", "fa-0")))
	writeFile(t, filepath.Join(dst, "extra", "new.txt"), []byte("not in the snapshot"), 0o644, time.Unix(5, 0))
	writeFile(t, filepath.Join(dst, "names", "extra"), []byte("not in the snapshot"), 0o644, time.Unix(5, 0))

	res := restoreOver(t, r, dst, RestoreOptions{})
	if _, err := os.Stat(filepath.Join(dst, "extra", "new.txt")); err != nil {
		t.Fatalf("without delete, an extra file went: %v", err)
	}
	if got, _ := os.ReadFile(sneaky); !strings.HasPrefix(string(got), "ZZZ") {
		t.Fatal("without verify, a file with the recorded size and mtime was rewritten")
	}
	if res.ReusedBytes < 15<<20 || res.PackBytes*4 > full.PackBytes {
		t.Errorf("appending to the 21 MiB file: reused %d bytes, read %d pack bytes (full restore %d)", res.ReusedBytes, res.PackBytes, full.PackBytes)
	}
	res = restoreOver(t, r, dst, RestoreOptions{Verify: true, Delete: true})
	if res.Deleted != 2 {
		t.Errorf("deleted %d entries, want 2", res.Deleted)
	}
	compareDirs(t, snapshotDir(t, src), snapshotDir(t, dst))
	for p, want := range map[string]string{victim: "outside the target", linkTarget: "hard-linked from the target"} {
		if got, _ := os.ReadFile(p); string(got) != want {
			t.Errorf("a file outside the target changed: %s = %q", p, got)
		}
	}
}

func TestRestoreInclude(t *testing.T) {
	src := t.TempDir()
	makeTree(t, src)
	t.Cleanup(func() { chmodTreeWritable(src) })
	r, _ := newMemRepo(t)
	doBackup(t, r, src)
	snap, _, err := r.FindSnapshot(context.Background(), "ws1", "latest")
	must(t, err)
	dst := t.TempDir()
	res, err := Restore(context.Background(), r, snap, dst, RestoreOptions{Include: []string{"names/日本語", "/dup/", "./perm/rodir"}})
	must(t, err)
	want := map[string]entry{}
	for p, e := range snapshotDir(t, src) {
		switch {
		case p == "." || p == "names" || p == "perm" || p == "names/日本語" || p == "perm/rodir" || strings.HasPrefix(p, "dup") || strings.HasPrefix(p, "perm/rodir/"):
			want[p] = e
		}
	}
	compareDirs(t, want, snapshotDir(t, dst))
	if res.Files != 4 {
		t.Errorf("restored %d files, want 4", res.Files)
	}
	for _, bad := range []string{"nope", "names/日本語/below", "../etc", "dup/../.."} {
		if _, err := Restore(context.Background(), r, snap, t.TempDir(), RestoreOptions{Include: []string{bad}}); err == nil {
			t.Errorf("include %q: no error", bad)
		}
	}
}
