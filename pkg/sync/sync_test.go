package sync

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	gosync "sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/placement"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/faults"
	"github.com/backupd/backupd/pkg/storage/local"
	"github.com/backupd/backupd/pkg/storage/mem"
	"github.com/backupd/backupd/pkg/storage/retry"
)

func restoreLatest(t testing.TB, r *repo.Repository, target string) (*RestoreResult, error) {
	t.Helper()
	snap, _, err := r.FindSnapshot(context.Background(), "ws1", "latest")
	if err != nil {
		t.Fatal(err)
	}
	return Restore(context.Background(), r, snap, target, RestoreOptions{})
}

func TestRoundTrip(t *testing.T) {
	for name, newRoot := range map[string]func(t *testing.T) storage.Storage{
		"mem": func(t *testing.T) storage.Storage { return mem.New() },
		"local": func(t *testing.T) storage.Storage {
			s, err := local.New(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
	} {
		t.Run(name, func(t *testing.T) {
			src := t.TempDir()
			makeTree(t, src)
			t.Cleanup(func() { chmodTreeWritable(src) })
			want := snapshotDir(t, src)
			rootInfo, _ := os.Stat(src)

			r := openRepo(t, newRoot(t))
			res := doBackup(t, r, src)
			if res.Snapshot.Stats.Files < 600 || res.Snapshot.Stats.Symlinks != 5 {
				t.Fatalf("stats = %+v", res.Snapshot.Stats)
			}

			dst := filepath.Join(t.TempDir(), "restored", "here")
			t.Cleanup(func() { chmodTreeWritable(dst) })
			rr, err := restoreLatest(t, r, dst)
			if err != nil {
				t.Fatal(err)
			}
			compareDirs(t, want, snapshotDir(t, dst))
			if rr.Files != res.Snapshot.Stats.Files || rr.Bytes != res.Snapshot.Stats.Bytes {
				t.Errorf("restore result %+v vs backup stats %+v", rr, res.Snapshot.Stats)
			}
			dstInfo, _ := os.Stat(dst)
			if !dstInfo.ModTime().Equal(rootInfo.ModTime()) || dstInfo.Mode() != rootInfo.Mode() {
				t.Errorf("target dir: mode %v mtime %v, want %v %v", dstInfo.Mode(), dstInfo.ModTime(), rootInfo.Mode(), rootInfo.ModTime())
			}
		})
	}
}

func TestSecondBackupStoresNoData(t *testing.T) {
	src := t.TempDir()
	makeTree(t, src)
	t.Cleanup(func() { chmodTreeWritable(src) })
	r, root := newMemRepo(t)
	first := doBackup(t, r, src)
	if first.Snapshot.Stats.NewBlobs == 0 || first.Snapshot.Stats.NewBytes == 0 {
		t.Fatalf("first backup stored nothing: %+v", first.Snapshot.Stats)
	}
	// Duplicate files are stored once.
	if first.Snapshot.Stats.NewBytes >= first.Snapshot.Stats.Bytes {
		t.Errorf("no dedup within the first backup: %+v", first.Snapshot.Stats)
	}
	// A fresh repository handle, as a new process would have.
	r2 := openRepo(t, root)
	second := doBackup(t, r2, src)
	st := second.Snapshot.Stats
	if st.NewBlobs != 0 || st.NewBytes != 0 || st.ObjectsWritten != 1 {
		t.Fatalf("unchanged re-backup stored data: %+v", st)
	}
	if second.Snapshot.Tree != first.Snapshot.Tree {
		t.Fatal("unchanged tree got a new root id")
	}
	if second.Snapshot.Parent != first.SnapshotID.String() {
		t.Fatalf("parent = %q, want %s", second.Snapshot.Parent, first.SnapshotID)
	}
}

func TestSmallEditInLargeFile(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 100 MiB")
	}
	src := t.TempDir()
	big := genData(42, 100<<20)
	writeFile(t, filepath.Join(src, "big.bin"), big, 0o644, time.Unix(1, 0))
	r, _ := newMemRepo(t)
	first := doBackup(t, r, src)
	if first.Snapshot.Stats.NewBlobs < 50 {
		t.Fatalf("100 MiB made only %d blobs", first.Snapshot.Stats.NewBlobs)
	}
	copy(big[50<<20:], genData(43, 1<<20))
	writeFile(t, filepath.Join(src, "big.bin"), big, 0o644, time.Unix(2, 0))
	second := doBackup(t, r, src)
	st := second.Snapshot.Stats
	// The changed data blobs (a few around the edit) plus two trees.
	if st.NewBlobs > 6 || st.NewBytes > 20<<20 {
		t.Fatalf("1 MiB edit stored %d new blobs, %d new bytes", st.NewBlobs, st.NewBytes)
	}
	dst := t.TempDir()
	if _, err := restoreLatest(t, r, dst); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(dst, "big.bin"))
	if !bytes.Equal(got, big) {
		t.Fatal("restored big file differs")
	}
}

// packKeys lists the pack objects of owner1's repository.
func packKeys(t *testing.T, root storage.Storage) []string {
	var keys []string
	err := root.List(context.Background(), "owner1/data/", func(oi storage.ObjectInfo) error {
		keys = append(keys, oi.Key)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

func flipByte(t *testing.T, root storage.Storage, key string, at func(size int) int) {
	ctx := context.Background()
	data, err := storage.ReadAll(ctx, root, key, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	data[at(len(data))] ^= 0x40
	if err := root.Put(ctx, key, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
}

func TestRestoreDetectsFlippedByte(t *testing.T) {
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "a"), genData(1, 3<<20), 0o644, time.Unix(1, 0))
	writeFile(t, filepath.Join(src, "sub", "b"), []byte("small file"), 0o644, time.Unix(1, 0))
	for _, where := range []string{"data", "tree"} {
		t.Run(where, func(t *testing.T) {
			r, root := newMemRepo(t)
			doBackup(t, r, src)
			// Find the pack holding the wanted blob type via its trailer.
			var victim string
			for _, key := range packKeys(t, root) {
				data, _ := storage.ReadAll(context.Background(), root, key, 0, -1)
				entries, err := repo.ParsePackTrailer(data, int64(len(data)))
				if err != nil {
					t.Fatal(err)
				}
				if entries[0].Type.String() == where {
					victim = key
				}
			}
			if victim == "" {
				t.Fatalf("no %s pack", where)
			}
			flipByte(t, root, victim, func(int) int { return 5 }) // inside the first blob
			_, err := restoreLatest(t, openRepo(t, root), t.TempDir())
			if err == nil || !errors.Is(err, repo.ErrCorrupt) {
				t.Fatalf("restore of damaged %s pack: err = %v, want ErrCorrupt", where, err)
			}
			name := strings.TrimPrefix(victim, "owner1/")
			if !strings.Contains(err.Error(), name) {
				t.Fatalf("error %q does not name the object %s", err, name)
			}
		})
	}
}

// storeTree writes raw tree bytes (possibly hostile) and a snapshot for it,
// bypassing the backup pipeline's checks, as an attacker with write access
// to the bucket could.
func storeTree(t *testing.T, r *repo.Repository, trees ...[]byte) *repo.Snapshot {
	t.Helper()
	ctx := context.Background()
	pb := repo.NewPackBuilder(1 << 10)
	var root chunk.ID
	for _, tr := range trees {
		id := chunk.Hash(tr)
		pb.Add(id, repo.TreeBlob, chunk.Raw, tr, len(tr))
		root = id
	}
	data, packID, entries := pb.Finish()
	if err := r.SavePack(ctx, data, packID, entries); err != nil {
		t.Fatal(err)
	}
	if _, err := r.SaveIndex(ctx, []repo.PackIndex{{Pack: packID, Blobs: entries}}); err != nil {
		t.Fatal(err)
	}
	return &repo.Snapshot{Tree: root, Owner: "owner1", Workspace: "ws1", Time: time.Now()}
}

// rawTree encodes nodes without EncodeTree's sortedness check.
func rawTree(nodes ...repo.Node) []byte {
	out := []byte("BKPDTR01")
	out = append(out, byte(len(nodes)))
	for _, n := range nodes {
		one := repo.EncodeTree(&repo.Tree{Nodes: []repo.Node{n}})
		out = append(out, one[9:]...)
	}
	return out
}

func TestRestoreRefusesEscapingTrees(t *testing.T) {
	outside := t.TempDir()
	empty := rawTree()
	emptyID := chunk.Hash(empty)
	cases := map[string][][]byte{
		"dotdot dir":    {empty, rawTree(repo.Node{Name: "..", Type: repo.TypeDir, Mode: 0o755, Subtree: emptyID})},
		"dotdot file":   {rawTree(repo.Node{Name: "..", Type: repo.TypeFile, Mode: 0o644})},
		"slash name":    {rawTree(repo.Node{Name: "../../" + filepath.Base(outside) + "/pwned", Type: repo.TypeFile, Mode: 0o644})},
		"absolute name": {rawTree(repo.Node{Name: filepath.Join(outside, "pwned"), Type: repo.TypeFile, Mode: 0o644})},
		// A symlink to outside, then a directory of the same name whose
		// content would be written through the link.
		"through symlink": {
			rawTree(repo.Node{Name: "pwned", Type: repo.TypeFile, Mode: 0o644}),
			rawTree(
				repo.Node{Name: "link", Type: repo.TypeSymlink, Target: outside},
				repo.Node{Name: "link", Type: repo.TypeDir, Mode: 0o755, Subtree: chunk.Hash(rawTree(repo.Node{Name: "pwned", Type: repo.TypeFile, Mode: 0o644}))},
			),
		},
		"through symlink file": {
			rawTree(
				repo.Node{Name: "link", Type: repo.TypeSymlink, Target: filepath.Join(outside, "pwned")},
				repo.Node{Name: "link", Type: repo.TypeFile, Mode: 0o644},
			),
		},
	}
	for name, trees := range cases {
		t.Run(name, func(t *testing.T) {
			r, _ := newMemRepo(t)
			snap := storeTree(t, r, trees...)
			target := filepath.Join(t.TempDir(), "target")
			_, err := Restore(context.Background(), r, snap, target, RestoreOptions{})
			if !errors.Is(err, repo.ErrCorrupt) {
				t.Fatalf("restore of hostile tree: err = %v, want ErrCorrupt", err)
			}
			if entries, _ := os.ReadDir(outside); len(entries) != 0 {
				t.Fatalf("restore wrote outside its target: %v", entries)
			}
			if _, err := os.Lstat(filepath.Join(target, "..", "pwned")); err == nil {
				t.Fatal("restore wrote next to its target")
			}
		})
	}
}

func TestRestoreTargetMustBeEmpty(t *testing.T) {
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "a"), []byte("a"), 0o644, time.Unix(1, 0))
	r, _ := newMemRepo(t)
	doBackup(t, r, src)
	dst := t.TempDir()
	writeFile(t, filepath.Join(dst, "keep"), []byte("mine"), 0o644, time.Unix(1, 0))
	if _, err := restoreLatest(t, r, dst); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("restore into non-empty dir: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(dst, "keep")); string(got) != "mine" {
		t.Fatal("existing file touched")
	}
}

// failingStorage fails Puts once armed: after `allowed` more have succeeded.
type failingStorage struct {
	storage.Storage
	armed   atomic.Bool
	allowed atomic.Int64
}

func (f *failingStorage) arm(allowed int64) { f.allowed.Store(allowed); f.armed.Store(true) }

func (f *failingStorage) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	if f.armed.Load() && f.allowed.Add(-1) < 0 {
		return errors.New("injected outage")
	}
	return f.Storage.Put(ctx, key, body, size)
}

func TestFailedBackupKeepsPreviousSnapshot(t *testing.T) {
	src := t.TempDir()
	makeTree(t, src)
	t.Cleanup(func() { chmodTreeWritable(src) })
	want := snapshotDir(t, src)
	fs := &failingStorage{Storage: mem.New()}
	r := openRepo(t, fs)
	first := doBackup(t, r, src)

	// Change everything, then fail the second backup after a few writes.
	writeFile(t, filepath.Join(src, "new-big"), genData(77, 40<<20), 0o644, time.Unix(5, 0))
	for _, failAt := range []int64{0, 1, 2} {
		fs.arm(failAt)
		_, err := Backup(context.Background(), openRepo(t, fs), src, BackupOptions{Owner: "owner1", Workspace: "ws1"})
		if err == nil || !strings.Contains(err.Error(), "injected outage") {
			t.Fatalf("backup with outage after %d puts: err = %v", failAt, err)
		}
	}
	fs.armed.Store(false)
	r2 := openRepo(t, fs)
	refs, err := r2.ListSnapshots(context.Background(), "ws1")
	if err != nil || len(refs) != 1 || refs[0].ID != first.SnapshotID {
		t.Fatalf("snapshots after failed backups: %v, %v", refs, err)
	}
	dst := t.TempDir()
	t.Cleanup(func() { chmodTreeWritable(dst) })
	if _, err := restoreLatest(t, r2, dst); err != nil {
		t.Fatal(err)
	}
	compareDirs(t, want, snapshotDir(t, dst))
}

// cancellingStorage cancels the backup's context when the first pack is
// uploaded: a deterministic "cancel mid-backup".
type cancellingStorage struct {
	storage.Storage
	cancel context.CancelFunc
}

func (c *cancellingStorage) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	if strings.Contains(key, "/data/") {
		c.cancel()
	}
	return c.Storage.Put(ctx, key, body, size)
}

func TestBackupCancelled(t *testing.T) {
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "big"), genData(3, 40<<20), 0o644, time.Unix(1, 0))
	ctx, cancel := context.WithCancel(context.Background())
	root := mem.New()
	r := openRepo(t, &cancellingStorage{Storage: root, cancel: cancel})
	_, err := Backup(ctx, r, src, BackupOptions{Owner: "owner1", Workspace: "ws1"})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled backup: err = %v", err)
	}
	if refs, _ := openRepo(t, root).ListSnapshots(context.Background(), "ws1"); len(refs) != 0 {
		t.Fatal("cancelled backup left a snapshot")
	}
}

func TestSpecialFilesAreSkippedWithWarning(t *testing.T) {
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "keep"), []byte("kept"), 0o644, time.Unix(1, 0))
	l, err := net.Listen("unix", filepath.Join(src, "sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	r, _ := newMemRepo(t)
	var warned []string
	var mu gosync.Mutex
	res, err := Backup(context.Background(), r, src, BackupOptions{Owner: "owner1", Workspace: "ws1",
		Warn: func(p string, err error) { mu.Lock(); warned = append(warned, p+": "+err.Error()); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	if res.Snapshot.Stats.Skipped != 1 || res.Snapshot.Stats.Files != 1 || len(warned) != 1 || !strings.Contains(warned[0], "sock") {
		t.Fatalf("stats %+v, warnings %q", res.Snapshot.Stats, warned)
	}
	dst := t.TempDir()
	if _, err := restoreLatest(t, r, dst); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(dst); len(entries) != 1 || entries[0].Name() != "keep" {
		t.Fatalf("restored %v", entries)
	}
}

func TestFileDeletedDuringBackupIsLeftOut(t *testing.T) {
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "a"), []byte("a"), 0o644, time.Unix(1, 0))
	writeFile(t, filepath.Join(src, "gone"), []byte("gone"), 0o644, time.Unix(1, 0))
	testHookBeforeOpen = func(p string) {
		if filepath.Base(p) == "gone" {
			os.Remove(p)
		}
	}
	defer func() { testHookBeforeOpen = nil }()
	r, _ := newMemRepo(t)
	var warnings atomic.Int64
	res, err := Backup(context.Background(), r, src, BackupOptions{Owner: "owner1", Workspace: "ws1",
		Warn: func(string, error) { warnings.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	if res.Snapshot.Stats.Files != 1 || res.Snapshot.Stats.Skipped != 1 || warnings.Load() != 1 {
		t.Fatalf("stats %+v, %d warnings", res.Snapshot.Stats, warnings.Load())
	}
	dst := t.TempDir()
	if _, err := restoreLatest(t, r, dst); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(dst); len(entries) != 1 || entries[0].Name() != "a" {
		t.Fatalf("restored %v", entries)
	}
}

func TestSpans(t *testing.T) {
	loc := func(off, n uint32) repo.Location {
		return repo.Location{BlobEntry: repo.BlobEntry{Offset: off, StoredLen: n}}
	}
	blobs := []repo.Location{
		loc(0, 100), loc(100, 100), // contiguous
		loc(200+maxGap+1, 10),      // after a too-large gap
		loc(300+maxGap, maxSpan),   // fills a span
		loc(300+maxGap+maxSpan, 5), // so this starts a new one
	}
	got := spans(blobs)
	want := []int{2, 2, 1}
	if len(got) != len(want) {
		t.Fatalf("got %d spans, want %d", len(got), len(want))
	}
	for i := range want {
		if len(got[i]) != want[i] {
			t.Fatalf("span %d has %d blobs, want %d", i, len(got[i]), want[i])
		}
	}
}

// With a fifth of all storage calls failing (some after the backend did
// the work), a backup through the retry wrapper completes and restores
// identically.
func TestBackupAndRestoreThroughFaults(t *testing.T) {
	src := t.TempDir()
	makeTree(t, src)
	t.Cleanup(func() { chmodTreeWritable(src) })
	want := snapshotDir(t, src)
	f := faults.New(mem.New(), faults.Options{Rate: 0.2, AfterRate: 0.5, Seed: 1})
	st := retry.New(f, retry.Options{Attempts: 20, Initial: time.Millisecond, Max: 5 * time.Millisecond})
	r := openRepo(t, st)
	doBackup(t, r, src)
	dst := t.TempDir()
	t.Cleanup(func() { chmodTreeWritable(dst) })
	if _, err := restoreLatest(t, openRepo(t, st), dst); err != nil {
		t.Fatal(err)
	}
	compareDirs(t, want, snapshotDir(t, dst))
	if f.Injected() < 3 {
		t.Fatalf("only %d faults injected: the test proves little", f.Injected())
	}
	t.Logf("%d faults injected over %d puts, %d gets", f.Injected(), f.Calls(faults.Put), f.Calls(faults.Get))
}

// Walking a snapshot reads each tree pack once, not each directory: on an
// object store that is the difference between a few round trips and
// thousands.
func TestRestoreReadsTreesByPack(t *testing.T) {
	src := t.TempDir()
	for i := range 300 {
		writeFile(t, filepath.Join(src, fmt.Sprintf("d%03d", i), "f"), []byte{byte(i)}, 0o644, time.Unix(1, 0))
	}
	f := faults.New(mem.New(), faults.Options{})
	doBackup(t, openRepo(t, f), src)
	r := openRepo(t, f)
	before := f.Calls(faults.Get)
	if _, err := restoreLatest(t, r, t.TempDir()); err != nil {
		t.Fatal(err)
	}
	// One tree pack, one data pack (in spans of at most 4 MiB), the snapshot.
	if gets := f.Calls(faults.Get) - before; gets > 5 {
		t.Fatalf("restore of 301 directories made %d reads", gets)
	}
}

// countOpens counts the files the backup reads.
func countOpens(t *testing.T) *atomic.Int64 {
	var n atomic.Int64
	testHookBeforeOpen = func(string) { n.Add(1) }
	t.Cleanup(func() { testHookBeforeOpen = nil })
	return &n
}

func TestUnchangedFilesAreNotRead(t *testing.T) {
	src := t.TempDir()
	for i := range 50 {
		writeFile(t, filepath.Join(src, fmt.Sprintf("d%d", i%5), fmt.Sprintf("f%d", i)), genData(uint64(i), 1000+i), 0o644, time.Unix(1e9, 0))
	}
	// Trust metadata at once: the files are older than the first backup's
	// start, which the test cannot push 2 s into the past otherwise.
	old := racyWindow
	racyWindow = 0
	t.Cleanup(func() { racyWindow = old })
	f := faults.New(mem.New(), faults.Options{})
	r := openRepo(t, f)
	first := doBackup(t, r, src)
	opens := countOpens(t)
	putsBefore := f.Calls(faults.Put)
	second := doBackup(t, openRepo(t, f), src)
	st := second.Snapshot.Stats
	if opens.Load() != 0 || st.UnchangedFiles != 50 || st.NewBlobs != 0 || second.Snapshot.Tree != first.Snapshot.Tree {
		t.Fatalf("unchanged re-backup read %d files; stats %+v", opens.Load(), st)
	}
	// Storage saw exactly one write: the snapshot object. No pack, no
	// tree, no index.
	if puts := f.Calls(faults.Put) - putsBefore; puts != 1 {
		t.Fatalf("unchanged re-backup made %d storage writes, want 1", puts)
	}
	// One file rewritten with the same size and mtime: its ctime moved.
	p := filepath.Join(src, "d3", "f13")
	writeFile(t, p, genData(999, 1013), 0o644, time.Unix(1e9, 0))
	opens.Store(0)
	third := doBackup(t, r, src)
	if opens.Load() != 1 || third.Snapshot.Stats.UnchangedFiles != 49 || third.Snapshot.Stats.NewBlobs == 0 {
		t.Fatalf("after one rewrite: read %d files; stats %+v", opens.Load(), third.Snapshot.Stats)
	}
	// --force reads everything.
	opens.Store(0)
	res, err := Backup(context.Background(), r, src, BackupOptions{Owner: "owner1", Workspace: "ws1", Force: true})
	if err != nil || opens.Load() != 50 || res.Snapshot.Stats.UnchangedFiles != 0 || res.Snapshot.Parent == "" {
		t.Fatalf("forced: read %d files, parent %q, %v", opens.Load(), res.Snapshot.Parent, err)
	}
	dst := t.TempDir()
	if _, err := restoreLatest(t, r, dst); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dst, "d3", "f13")); !bytes.Equal(got, genData(999, 1013)) {
		t.Fatal("restored the stale content of the rewritten file")
	}
}

// Files changed too close to the parent backup are read again even when
// their metadata matches (timestamps are coarser than a rewrite).
func TestRacyFilesAreReadAgain(t *testing.T) {
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "f"), []byte("v1"), 0o644, time.Unix(1e9, 0))
	r, _ := newMemRepo(t)
	doBackup(t, r, src) // the file's ctime is within racyWindow of this backup
	opens := countOpens(t)
	st := doBackup(t, r, src).Snapshot.Stats
	if opens.Load() != 1 || st.UnchangedFiles != 0 {
		t.Fatalf("racy file: read %d times; stats %+v", opens.Load(), st)
	}
}

// Numeric ownership survives a round trip when restoring as root (CI runs
// as root; elsewhere the test needs it too, so it fails in CI if not root).
func TestOwnershipIsRestoredAsRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI must run as root to test ownership")
		}
		t.Skip("restoring ownership needs root")
	}
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "d", "f"), []byte("x"), 0o644, time.Unix(1, 0))
	writeFile(t, filepath.Join(src, "d", "suid"), []byte("x"), 0o755, time.Unix(1, 0))
	must(t, os.Symlink("f", filepath.Join(src, "d", "l")))
	must(t, os.Lchown(filepath.Join(src, "d", "f"), 33333, 33334))
	must(t, os.Lchown(filepath.Join(src, "d", "suid"), 1000, 1000))
	must(t, os.Chmod(filepath.Join(src, "d", "suid"), 0o755|os.ModeSetuid))
	must(t, os.Lchown(filepath.Join(src, "d", "l"), 4444, 5555))
	must(t, os.Lchown(filepath.Join(src, "d"), 33333, 33333))
	must(t, os.Lchown(src, 7, 8))
	r, _ := newMemRepo(t)
	doBackup(t, r, src)
	dst := filepath.Join(t.TempDir(), "r")
	if _, err := restoreLatest(t, r, dst); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string][2]uint32{"": {7, 8}, "d": {33333, 33333}, "d/f": {33333, 33334}, "d/suid": {1000, 1000}, "d/l": {4444, 5555}} {
		var st unix.Stat_t
		must(t, unix.Lstat(filepath.Join(dst, p), &st))
		if st.Uid != want[0] || st.Gid != want[1] {
			t.Errorf("%q owned by %d:%d, want %d:%d", p, st.Uid, st.Gid, want[0], want[1])
		}
	}
	fi, _ := os.Stat(filepath.Join(dst, "d", "suid"))
	if fi.Mode()&os.ModeSetuid == 0 {
		t.Error("setuid bit lost (chown after chmod?)")
	}
}

func TestFIFORoundTrip(t *testing.T) {
	src := t.TempDir()
	p := filepath.Join(src, "pipe")
	if err := syscall.Mkfifo(p, 0o640); err != nil {
		t.Fatal(err)
	}
	must(t, os.Chtimes(p, time.Unix(1e9, 123), time.Unix(1e9, 123)))
	want := snapshotDir(t, src)
	r, _ := newMemRepo(t)
	if st := doBackup(t, r, src).Snapshot.Stats; st.Skipped != 0 {
		t.Fatalf("FIFO skipped: %+v", st)
	}
	dst := t.TempDir()
	if _, err := restoreLatest(t, r, dst); err != nil {
		t.Fatal(err)
	}
	compareDirs(t, want, snapshotDir(t, dst))
	if fi, err := os.Lstat(filepath.Join(dst, "pipe")); err != nil || fi.Mode().Type() != os.ModeNamedPipe {
		t.Fatalf("restored %v, %v", fi, err)
	}
}

func TestXattrsRoundTrip(t *testing.T) {
	src := t.TempDir()
	f := filepath.Join(src, "d", "f")
	writeFile(t, f, []byte("content"), 0o644, time.Unix(1e9, 0))
	for p, v := range map[string]string{f: "file value", filepath.Join(src, "d"): "dir value"} {
		if err := unix.Setxattr(p, "user.backupd.test", []byte(v), 0); err != nil {
			t.Fatalf("setxattr: %v (the test file system must support user xattrs)", err)
		}
	}
	must(t, unix.Setxattr(f, "user.empty", nil, 0))
	old := racyWindow
	racyWindow = 0
	t.Cleanup(func() { racyWindow = old })
	r, _ := newMemRepo(t)
	doBackup(t, r, src)
	// The second backup takes the file over unchanged, xattrs included.
	if st := doBackup(t, r, src).Snapshot.Stats; st.UnchangedFiles != 1 {
		t.Fatalf("stats %+v", st)
	}
	dst := t.TempDir()
	if _, err := restoreLatest(t, r, dst); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]string{"d/f": "file value", "d": "dir value"} {
		buf := make([]byte, 64)
		n, err := unix.Lgetxattr(filepath.Join(dst, p), "user.backupd.test", buf)
		if err != nil || string(buf[:n]) != want {
			t.Errorf("%s: xattr = %q, %v; want %q", p, buf[:max(n, 0)], err, want)
		}
	}
	if n, err := unix.Lgetxattr(filepath.Join(dst, "d", "f"), "user.empty", nil); err != nil || n != 0 {
		t.Errorf("empty xattr: %d, %v", n, err)
	}
}

func TestHardlinksRoundTrip(t *testing.T) {
	src := t.TempDir()
	a := filepath.Join(src, "a")
	writeFile(t, a, genData(5, 3<<20), 0o640, time.Unix(1e9, 0))
	must(t, os.MkdirAll(filepath.Join(src, "other", "dir"), 0o755))
	must(t, os.Link(a, filepath.Join(src, "b")))
	must(t, os.Link(a, filepath.Join(src, "other", "dir", "c")))
	writeFile(t, filepath.Join(src, "single"), []byte("one link"), 0o644, time.Unix(1e9, 0))
	want := snapshotDir(t, src)
	r, _ := newMemRepo(t)
	doBackup(t, r, src)
	dst := t.TempDir()
	res, err := restoreLatest(t, r, dst)
	if err != nil {
		t.Fatal(err)
	}
	compareDirs(t, want, snapshotDir(t, dst))
	var sa, sb, sc, ss unix.Stat_t
	must(t, unix.Lstat(filepath.Join(dst, "a"), &sa))
	must(t, unix.Lstat(filepath.Join(dst, "b"), &sb))
	must(t, unix.Lstat(filepath.Join(dst, "other", "dir", "c"), &sc))
	must(t, unix.Lstat(filepath.Join(dst, "single"), &ss))
	if sa.Ino != sb.Ino || sa.Ino != sc.Ino || sa.Nlink != 3 || ss.Nlink != 1 {
		t.Fatalf("inodes a=%d b=%d c=%d nlink=%d, single nlink=%d", sa.Ino, sb.Ino, sc.Ino, sa.Nlink, ss.Nlink)
	}
	if res.Files != 4 || res.Bytes != 3<<20+8 {
		t.Fatalf("restore wrote %d files, %d bytes: the linked content was written more than once", res.Files, res.Bytes)
	}
}

func TestSparseFilesStaySparse(t *testing.T) {
	src := t.TempDir()
	p := filepath.Join(src, "sparse")
	f, err := os.Create(p)
	must(t, err)
	must(t, f.Truncate(64<<20))
	_, err = f.WriteAt([]byte("data at 1 MiB"), 1<<20)
	must(t, err)
	_, err = f.WriteAt(genData(9, 100<<10), 60<<20)
	must(t, err)
	must(t, f.Close())
	want, _ := os.ReadFile(p)
	r, _ := newMemRepo(t)
	if st := doBackup(t, r, src).Snapshot.Stats; st.NewBytes > 4<<20 {
		t.Fatalf("64 MiB of mostly holes stored %d new bytes", st.NewBytes)
	}
	dst := t.TempDir()
	if _, err := restoreLatest(t, r, dst); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(dst, "sparse"))
	if !bytes.Equal(got, want) {
		t.Fatal("sparse file content differs")
	}
	var st unix.Stat_t
	must(t, unix.Stat(filepath.Join(dst, "sparse"), &st))
	if used := st.Blocks * 512; used > 8<<20 {
		t.Fatalf("restored sparse file uses %d bytes on disk for 64 MiB of mostly holes", used)
	}
}

func TestIDMaps(t *testing.T) {
	for _, bad := range []string{"", "1:2", "a:1:1", "0:0:0", "4294967295:0:2", "1:2:3:4"} {
		if _, err := ParseIDRange(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	r, err := ParseIDRange("0:100000:65536")
	if err != nil {
		t.Fatal(err)
	}
	m := IDMap{r}
	if m.ToContainer(133333) != 33333 || m.ToHost(33333) != 133333 || m.ToContainer(5) != 5 || m.ToHost(70000) != 70000 {
		t.Fatal("mapping wrong")
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI must run as root to test ownership")
		}
		t.Skip("restoring ownership needs root")
	}
	src := t.TempDir()
	f := filepath.Join(src, "f")
	writeFile(t, f, []byte("x"), 0o644, time.Unix(1, 0))
	must(t, os.Lchown(f, 133333, 133334))
	rp, _ := newMemRepo(t)
	res, err := Backup(context.Background(), rp, src, BackupOptions{Owner: "owner1", Workspace: "ws1", UIDMap: m, GIDMap: m})
	if err != nil {
		t.Fatal(err)
	}
	tr, err := rp.LoadTree(context.Background(), res.Snapshot.Tree)
	if err != nil || tr.Nodes[0].UID != 33333 || tr.Nodes[0].GID != 33334 {
		t.Fatalf("recorded %+v, %v; want container ids 33333:33334", tr.Nodes[0], err)
	}
	for _, c := range []struct {
		m        IDMap
		uid, gid uint32
	}{{m, 133333, 133334}, {nil, 33333, 33334}} {
		dst := t.TempDir()
		if _, err := Restore(context.Background(), rp, res.Snapshot, dst, RestoreOptions{UIDMap: c.m, GIDMap: c.m}); err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		must(t, unix.Lstat(filepath.Join(dst, "f"), &st))
		if st.Uid != c.uid || st.Gid != c.gid {
			t.Errorf("map %v: restored %d:%d, want %d:%d", c.m, st.Uid, st.Gid, c.uid, c.gid)
		}
	}
}

// A full disk during restore is a clear error, not a silently short file.
func TestRestoreOntoFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI must run as root to mount a small file system")
		}
		t.Skip("mounting a tmpfs needs root")
	}
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "big"), genData(11, 5<<20), 0o644, time.Unix(1, 0))
	r, _ := newMemRepo(t)
	doBackup(t, r, src)
	mnt := t.TempDir()
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	_, err := restoreLatest(t, r, filepath.Join(mnt, "target"))
	if err == nil || !errors.Is(err, unix.ENOSPC) || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("restore onto a full disk: %v", err)
	}
}

// The node-local cache spares downloads of index objects and tree packs,
// and deleting or damaging it changes nothing but speed.
func TestNodeCache(t *testing.T) {
	src := t.TempDir()
	for i := range 40 {
		writeFile(t, filepath.Join(src, fmt.Sprintf("d%d", i%8), fmt.Sprintf("f%d", i)), genData(uint64(i), 2000), 0o644, time.Unix(1e9, 0))
	}
	f := faults.New(mem.New(), faults.Options{})
	st, err := placement.NewPrefixPerOwner(f).Owner(context.Background(), "owner1", true)
	must(t, err)
	cacheDir := t.TempDir()
	load := func() *repo.Repository {
		r, err := repo.LoadCached(context.Background(), st, true, cacheDir, 0)
		must(t, err)
		return r
	}
	first := doBackup(t, load(), src)
	restoreGets := func() int64 {
		before := f.Calls(faults.Get)
		if _, err := restoreLatest(t, load(), t.TempDir()); err != nil {
			t.Fatal(err)
		}
		return f.Calls(faults.Get) - before
	}
	warm := restoreGets() // the backup cached the index and trees it wrote
	os.RemoveAll(cacheDir)
	cold := restoreGets()
	t.Logf("storage reads per restore: warm cache %d, cold %d", warm, cold)
	if again := restoreGets(); again != warm || warm >= cold {
		t.Fatalf("reads: warm %d, cold %d, warm again %d: the cache saved nothing", warm, cold, again)
	}
	// Damage every cached file, then delete the cache: same results.
	filepath.WalkDir(cacheDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			os.WriteFile(p, []byte("garbage"), 0o600)
		}
		return nil
	})
	second := doBackup(t, load(), src)
	os.RemoveAll(cacheDir)
	third := doBackup(t, load(), src)
	if second.Snapshot.Tree != first.Snapshot.Tree || third.Snapshot.Tree != first.Snapshot.Tree {
		t.Fatal("a damaged or deleted cache changed the snapshot content")
	}
	if _, err := restoreLatest(t, load(), t.TempDir()); err != nil {
		t.Fatal(err)
	}
}
