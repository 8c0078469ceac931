package sync

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	gosync "sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/backupd/backupd/pkg/placement"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage/local"
	"github.com/backupd/backupd/pkg/storage/mem"
)

// restoreID restores snapshot id of ws1 into a new directory and returns
// what it holds.
func restoreID(t *testing.T, r *repo.Repository, id string) map[string]entry {
	t.Helper()
	snap, _, err := r.FindSnapshot(context.Background(), "ws1", id)
	if err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	t.Cleanup(func() { chmodTreeWritable(dst) })
	if _, err := Restore(context.Background(), r, snap, dst, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	return snapshotDir(t, dst)
}

// without returns want less the entries at or below the paths given.
func without(want map[string]entry, paths ...string) map[string]entry {
	m := map[string]entry{}
	for p, e := range want {
		if !slices.ContainsFunc(paths, func(q string) bool { return p == q || strings.HasPrefix(p, q+"/") }) {
			m[p] = e
		}
	}
	return m
}

// A file whose read fails midway with EIO and a directory whose listing
// fails with EIO (injected at the system calls' place) are left out of
// the snapshot, which lists them; the rest is kept. In strict mode the
// backup fails. The previous snapshot stays restorable byte for byte
// either way.
func TestIOErrorsAreSkippedAndListed(t *testing.T) {
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "keep"), []byte("kept"), 0o644, time.Unix(1, 0))
	writeFile(t, filepath.Join(src, "big"), genData(11, 12<<20), 0o644, time.Unix(2, 0))
	writeFile(t, filepath.Join(src, "sub", "a"), []byte("a"), 0o644, time.Unix(3, 0))
	writeFile(t, filepath.Join(src, "sub", "deeper", "b"), genData(12, 1<<20), 0o644, time.Unix(4, 0))
	writeFile(t, filepath.Join(src, "other", "c"), []byte("c"), 0o644, time.Unix(5, 0))
	want := snapshotDir(t, src)
	r, root := newMemRepo(t)
	first := doBackup(t, r, src)

	var readAt gosync.Map // path -> the offsets read at
	testHookFault = func(op, path string, off int64) error {
		switch {
		case op == "read" && filepath.Base(path) == "big":
			readAt.Store(off, true)
			if off >= 8<<20 {
				return unix.EIO
			}
		case op == "getdents" && filepath.Base(path) == "sub":
			return unix.EIO
		}
		return nil
	}
	t.Cleanup(func() { testHookFault = nil })
	var mu gosync.Mutex
	var warned []string
	opts := BackupOptions{Owner: "owner1", Workspace: "ws1", Force: true,
		Warn: func(p string, err error) { mu.Lock(); warned = append(warned, p+": "+err.Error()); mu.Unlock() }}

	strict := opts
	strict.Strict = true
	if _, err := Backup(context.Background(), openRepo(t, root), src, strict); !errors.Is(err, unix.EIO) {
		t.Fatalf("strict backup: %v, want EIO", err)
	}
	if refs, err := openRepo(t, root).ListSnapshots(context.Background(), "ws1"); err != nil || len(refs) != 1 {
		t.Fatalf("snapshots after the strict backup: %v, %v", refs, err)
	}

	warned = nil
	res, err := Backup(context.Background(), openRepo(t, root), src, opts)
	if err != nil {
		t.Fatal(err)
	}
	wantList := []repo.UnreadableEntry{{Path: "big", Reason: "read: input/output error"}, {Path: "sub", Reason: "getdents: input/output error"}}
	st := res.Snapshot.Stats
	if !slices.Equal(res.Snapshot.Unreadable, wantList) || st.Unreadable != 2 || st.Skipped != 0 || st.Files != 2 || st.Dirs != 2 || st.Bytes != 5 {
		t.Fatalf("unreadable %+v, stats %+v", res.Snapshot.Unreadable, st)
	}
	if _, ok := readAt.Load(int64(0)); !ok {
		t.Fatal("big was not read from its start")
	}
	if len(warned) != 2 || !strings.Contains(strings.Join(warned, "\n"), filepath.Join(src, "big")+": skipped, cannot be read: read: input/output error") {
		t.Fatalf("warnings %q", warned)
	}
	testHookFault = nil

	// What is stored says the same, and restores without the two.
	r2 := openRepo(t, root)
	snap, _, err := r2.FindSnapshot(context.Background(), "ws1", res.SnapshotID.String())
	if err != nil || !slices.Equal(snap.Unreadable, wantList) || snap.Stats.Unreadable != 2 {
		t.Fatalf("stored snapshot: %+v, %v", snap, err)
	}
	compareDirs(t, without(want, "big", "sub"), restoreID(t, r2, res.SnapshotID.String()))
	compareDirs(t, want, restoreID(t, r2, first.SnapshotID.String()))
	// The next backup, as the parent has no "big", reads it again.
	third := doBackup(t, r2, src)
	compareDirs(t, want, restoreID(t, r2, third.SnapshotID.String()))
	if third.Snapshot.Unreadable != nil || third.Snapshot.Stats.Unreadable != 0 {
		t.Fatalf("third backup: %+v", third.Snapshot)
	}
}

// Errors of the backup's own (of its storage) still fail a lenient
// backup, and an unreadable backed-up directory fails it too.
func TestStorageAndRootErrorsStillFail(t *testing.T) {
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "big"), genData(3, 20<<20), 0o644, time.Unix(1, 0))
	fs := &failingStorage{Storage: mem.New()}
	r := openRepo(t, fs)
	fs.arm(0)
	if _, err := Backup(context.Background(), r, src, BackupOptions{Owner: "owner1", Workspace: "ws1"}); err == nil || !strings.Contains(err.Error(), "injected outage") {
		t.Fatalf("backup with a storage outage: %v", err)
	}
	fs.armed.Store(false)
	testHookFault = func(op, path string, off int64) error {
		if op == "getdents" && path == src {
			return unix.EIO
		}
		return nil
	}
	t.Cleanup(func() { testHookFault = nil })
	if _, err := Backup(context.Background(), openRepo(t, fs), src, BackupOptions{Owner: "owner1", Workspace: "ws1"}); !errors.Is(err, unix.EIO) {
		t.Fatalf("backup of an unlistable directory: %v, want EIO", err)
	}
	if refs, _ := openRepo(t, fs).ListSnapshots(context.Background(), "ws1"); len(refs) != 0 {
		t.Fatalf("snapshots: %v", refs)
	}
}

// More unreadable entries than a snapshot lists: all are counted, the
// first MaxUnreadable listed.
func TestUnreadableListIsCapped(t *testing.T) {
	src := t.TempDir()
	n := repo.MaxUnreadable + 10
	for i := range n {
		writeFile(t, filepath.Join(src, fmt.Sprintf("f%05d", i)), []byte("x"), 0o644, time.Unix(1, 0))
	}
	testHookFault = func(op, path string, off int64) error {
		if op == "read" {
			return unix.EACCES
		}
		return nil
	}
	t.Cleanup(func() { testHookFault = nil })
	r, _ := newMemRepo(t)
	res, err := Backup(context.Background(), r, src, BackupOptions{Owner: "owner1", Workspace: "ws1"})
	if err != nil {
		t.Fatal(err)
	}
	if s := res.Snapshot; s.Stats.Unreadable != int64(n) || len(s.Unreadable) != repo.MaxUnreadable || s.Stats.Files != 0 ||
		!slices.IsSortedFunc(s.Unreadable, func(a, b repo.UnreadableEntry) int { return strings.Compare(a.Path, b.Path) }) {
		t.Fatalf("%d listed, stats %+v", len(s.Unreadable), s.Stats)
	}
}

// unreadableChildEnv makes the test binary a child of
// TestPermissionDeniedAsNonRoot: it backs up as told (unreadableJob) and
// exits.
const unreadableChildEnv = "BACKUPD_TEST_UNREADABLE_CHILD"

type unreadableJob struct {
	Repo, Src string
	Strict    bool
}

// unreadableChild runs the backup of job (JSON) into the local repository
// it names, printing the snapshot id; 1 on failure.
func unreadableChild(job string) int {
	var j unreadableJob
	if err := json.Unmarshal([]byte(job), &j); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx := context.Background()
	err := func() error {
		root, err := local.New(j.Repo)
		if err != nil {
			return err
		}
		st, err := placement.NewPrefixPerOwner(root).Owner(ctx, "owner1", false)
		if err != nil {
			return err
		}
		r, err := repo.Load(ctx, st, false)
		if err != nil {
			return err
		}
		res, err := Backup(ctx, r, j.Src, BackupOptions{Owner: "owner1", Workspace: "ws1", Strict: j.Strict,
			Warn: func(p string, err error) { fmt.Fprintf(os.Stderr, "warning: %s: %v\n", p, err) }})
		if err != nil {
			return err
		}
		fmt.Println(res.SnapshotID)
		return nil
	}()
	if err != nil {
		fmt.Fprintln(os.Stderr, "backup failed:", err)
		return 1
	}
	return 0
}

// nobody is the uid and gid the child backs up as.
const nobody = 65534

// A real EACCES: as root, the test binary backs up again as uid 65534 a
// tree where a file, the exclude file and a directory are mode 000 and a
// directory may be listed but not searched. The entries refused are left out and listed;
// in strict mode the backup fails; the previous snapshot (made as root,
// of everything) restores byte for byte either way.
func TestPermissionDeniedAsNonRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to run the backup as another user")
	}
	// Everything the child touches lies in a directory it may traverse.
	base, err := os.MkdirTemp("", "backupd-unreadable-")
	must(t, err)
	t.Cleanup(func() { chmodTreeWritable(base); os.RemoveAll(base) })
	must(t, os.Chmod(base, 0o755))
	src, repoDir := filepath.Join(base, "src"), filepath.Join(base, "repo")
	writeFile(t, filepath.Join(src, "keep"), []byte("kept"), 0o644, time.Unix(1, 0))
	writeFile(t, filepath.Join(src, "secret"), []byte("secret"), 0o000, time.Unix(2, 0))
	writeFile(t, filepath.Join(src, ".backupdignore"), []byte("*.nothing\n"), 0o000, time.Unix(2, 0))
	writeFile(t, filepath.Join(src, "locked", "inside"), []byte("inside"), 0o644, time.Unix(3, 0))
	writeFile(t, filepath.Join(src, "noexec", "x"), []byte("x"), 0o644, time.Unix(4, 0))
	writeFile(t, filepath.Join(src, "open", "y"), genData(5, 3<<20), 0o644, time.Unix(5, 0))
	must(t, os.Chmod(filepath.Join(src, "locked"), 0o000))
	must(t, os.Chmod(filepath.Join(src, "noexec"), 0o644))
	must(t, os.Chmod(src, 0o755))
	want := snapshotDir(t, src)

	root, err := local.New(repoDir)
	must(t, err)
	first := doBackup(t, openRepo(t, root), src)
	// The child writes to the repository.
	must(t, filepath.WalkDir(repoDir, func(p string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, nobody, nobody)
	}))
	// The test binary, where the child may execute it.
	self, err := os.Executable()
	must(t, err)
	bin := filepath.Join(base, "sync.test")
	copyFile(t, self, bin)

	child := func(strict bool) (string, string, error) {
		job, _ := json.Marshal(unreadableJob{Repo: repoDir, Src: src, Strict: strict})
		cmd := exec.Command(bin, "-test.run=^$")
		cmd.Env = append(os.Environ(), unreadableChildEnv+"="+string(job))
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		return strings.TrimSpace(stdout.String()), stderr.String(), err
	}

	_, errText, err := child(true)
	if err == nil || !strings.Contains(errText, "permission denied") {
		t.Fatalf("strict backup as uid %d: %v\n%s", nobody, err, errText)
	}
	if refs, err := openRepo(t, root).ListSnapshots(context.Background(), "ws1"); err != nil || len(refs) != 1 {
		t.Fatalf("snapshots after the strict backup: %v, %v", refs, err)
	}
	compareDirs(t, want, restoreID(t, openRepo(t, root), first.SnapshotID.String()))

	id, errText, err := child(false)
	if err != nil {
		t.Fatalf("backup as uid %d: %v\n%s", nobody, err, errText)
	}
	r := openRepo(t, root)
	snap, _, err := r.FindSnapshot(context.Background(), "ws1", id)
	must(t, err)
	wantList := []repo.UnreadableEntry{
		{Path: ".backupdignore", Reason: "open: permission denied"},
		{Path: "locked", Reason: "open: permission denied"},
		{Path: "noexec/x", Reason: "stat: permission denied"},
		{Path: "secret", Reason: "open: permission denied"},
	}
	if !slices.Equal(snap.Unreadable, wantList) || snap.Stats.Unreadable != 4 || snap.Stats.Files != 2 {
		t.Fatalf("unreadable %+v, stats %+v\n%s", snap.Unreadable, snap.Stats, errText)
	}
	if !strings.Contains(errText, filepath.Join(src, ".backupdignore")+": cannot be read, its patterns are not applied: ") {
		t.Errorf("no warning of the exclude file:\n%s", errText)
	}
	for _, w := range []string{".backupdignore", "locked", "noexec/x", "secret"} {
		if !strings.Contains(errText, filepath.Join(src, w)+": skipped, cannot be read: ") {
			t.Errorf("no warning of %s:\n%s", w, errText)
		}
	}
	compareDirs(t, without(want, ".backupdignore", "locked", "noexec/x", "secret"), restoreID(t, r, id))
	compareDirs(t, want, restoreID(t, r, first.SnapshotID.String()))
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	must(t, err)
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	must(t, err)
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	must(t, out.Close())
}
