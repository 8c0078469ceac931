package sync

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// lateDirTree is readyTree with a dependency directory of small files (a
// symlink and hard links in it, one of them to a file outside it) and a
// small log file, for restores with Late patterns.
func lateDirTree(t *testing.T) (src string, early map[string][]byte, staged map[string][]byte) {
	t.Helper()
	src, early, _ = readyTree(t)
	mt := time.Unix(1.6e9, 0)
	staged = map[string][]byte{
		"node_modules/a/index.js":          genData(20, 300),
		"node_modules/a/lib/util.js":       genData(21, 5000),
		"node_modules/b/package.json":      genData(22, 120),
		"node_modules/big/blob.wasm":       genData(23, 2<<20),
		"node_modules/ro/readme.md":        genData(24, 50),
		"node_modules/a/lib/deep/x/y/z.js": genData(25, 10),
	}
	for p, data := range staged {
		writeFile(t, filepath.Join(src, p), data, 0o644, mt)
	}
	writeFile(t, filepath.Join(src, "debug.log"), genData(26, 200), 0o644, mt)
	writeFile(t, filepath.Join(src, "shared.txt"), genData(27, 90), 0o644, mt)
	must(t, os.Link(filepath.Join(src, "shared.txt"), filepath.Join(src, "node_modules", "b", "shared.txt")))
	must(t, os.Link(filepath.Join(src, "node_modules", "a", "index.js"), filepath.Join(src, "node_modules", "b", "index.js")))
	must(t, os.Symlink("../a/index.js", filepath.Join(src, "node_modules", "b", "main.js")))
	must(t, os.Chmod(filepath.Join(src, "node_modules", "ro"), 0o555))
	for _, d := range []string{"node_modules/ro", "node_modules/b", "node_modules/a/lib", "node_modules/a", "node_modules", "."} {
		must(t, os.Chtimes(filepath.Join(src, d), mt, mt))
	}
	return src, early, staged
}

// TestLateDirectoryArrivesWhole: a directory a late pattern matches is not
// there at READY, is written under a temporary name, and appears in one
// rename, complete, with its links and metadata; a file a late pattern
// matches is late however small, and though it is recent.
func TestLateDirectoryArrivesWhole(t *testing.T) {
	withRenameFallback(t, testLateDirectoryArrivesWhole)
}

func testLateDirectoryArrivesWhole(t *testing.T) {
	src, early, staged := lateDirTree(t)
	r, _ := newMemRepo(t)
	snap := doBackup(t, r, src).Snapshot
	dst := filepath.Join(t.TempDir(), "ws")
	opts := readyOpts(snap)
	opts.Late = []string{"node_modules/", "*.log"}
	var stagedBytes int64
	for _, data := range staged {
		stagedBytes += int64(len(data))
	}
	// A late pattern wins over the recent list: dir/recent.log is late.
	delete(early, "dir/recent.log")
	readyCalls := 0
	opts.Ready = func(left int64) {
		readyCalls++
		if left < stagedBytes {
			t.Errorf("Ready: %d bytes left, want at least the staged directory's %d", left, stagedBytes)
		}
		for p, data := range early {
			if got, err := os.ReadFile(filepath.Join(dst, p)); err != nil || !bytes.Equal(got, data) {
				t.Errorf("at READY, early file %s: %d bytes, %v", p, len(got), err)
			}
		}
		for _, p := range []string{"node_modules", "debug.log", "dir/recent.log"} {
			if _, err := os.Lstat(filepath.Join(dst, p)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("at READY, late %s is already there (%v)", p, err)
			}
		}
		if _, err := os.Stat(filepath.Join(dst, "shared.txt")); err != nil {
			t.Errorf("at READY, shared.txt (a hard link's other name is in the late directory): %v", err)
		}
	}
	var mu gosync.Mutex // late files are renamed by the pack workers
	renames := map[string]bool{}
	testHookLateRename = func(p string) error {
		mu.Lock()
		renames[p] = true
		mu.Unlock()
		if strings.HasSuffix(p, "/node_modules") {
			// Just before the directory goes into place: not there under
			// its name, complete under a temporary one.
			if _, err := os.Lstat(filepath.Join(dst, "node_modules")); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("before its rename, node_modules is there (%v)", err)
			}
			tmp := tempFiles(t, dst)
			if len(tmp) != 1 || filepath.Dir(tmp[0]) != dst {
				t.Fatalf("before the rename, temporary entries %q, want one directory in the target", tmp)
			}
			for p, data := range staged {
				rel := strings.TrimPrefix(p, "node_modules/")
				if got, err := os.ReadFile(filepath.Join(tmp[0], rel)); err != nil || !bytes.Equal(got, data) {
					t.Errorf("staged %s: %d bytes, %v", p, len(got), err)
				}
			}
		}
		return nil
	}
	t.Cleanup(func() { testHookLateRename = nil })
	res, err := Restore(context.Background(), r, snap, dst, opts)
	must(t, err)
	t.Cleanup(func() { chmodTreeWritable(dst) })
	if readyCalls != 1 {
		t.Fatalf("Ready called %d times", readyCalls)
	}
	if !renames[filepath.Join(dst, "node_modules")] || !renames[filepath.Join(dst, "debug.log")] {
		t.Errorf("renamed into place: %v; want node_modules and debug.log among them", renames)
	}
	if res.Conflicts != 0 {
		t.Errorf("conflicts %d: %q", res.Conflicts, res.ConflictPaths)
	}
	compareDirs(t, snapshotDir(t, src), snapshotDir(t, dst))
	var a, b, s1, s2 unix.Stat_t
	must(t, unix.Lstat(filepath.Join(dst, "node_modules/a/index.js"), &a))
	must(t, unix.Lstat(filepath.Join(dst, "node_modules/b/index.js"), &b))
	must(t, unix.Lstat(filepath.Join(dst, "shared.txt"), &s1))
	must(t, unix.Lstat(filepath.Join(dst, "node_modules/b/shared.txt"), &s2))
	if a.Ino != b.Ino || s1.Ino != s2.Ino || a.Nlink != 2 || s1.Nlink != 2 {
		t.Errorf("hard links: index.js %d/%d (nlink %d), shared.txt %d/%d (nlink %d); want one inode each, two names", a.Ino, b.Ino, a.Nlink, s1.Ino, s2.Ino, s1.Nlink)
	}
	if tmp := tempFiles(t, dst); len(tmp) != 0 {
		t.Fatalf("temporary entries left: %q", tmp)
	}
}

// TestLateDirectoryGivesWayToTheWorkspaces: a workspace that makes the
// directory itself after READY (an npm install, say) keeps its own; the
// staged copy goes and the conflict is reported.
func TestLateDirectoryGivesWayToTheWorkspaces(t *testing.T) {
	withRenameFallback(t, testLateDirectoryGivesWayToTheWorkspaces)
}

func testLateDirectoryGivesWayToTheWorkspaces(t *testing.T) {
	src, _, _ := lateDirTree(t)
	r, _ := newMemRepo(t)
	snap := doBackup(t, r, src).Snapshot
	dst := filepath.Join(t.TempDir(), "ws")
	opts := readyOpts(snap)
	opts.Late = []string{"node_modules/"}
	mine := []byte("the workspace's own install")
	opts.Ready = func(int64) {
		writeFile(t, filepath.Join(dst, "node_modules", "mine.js"), mine, 0o644, time.Now())
	}
	res, err := Restore(context.Background(), r, snap, dst, opts)
	must(t, err)
	t.Cleanup(func() { chmodTreeWritable(dst) })
	ents, err := os.ReadDir(filepath.Join(dst, "node_modules"))
	must(t, err)
	if len(ents) != 1 || ents[0].Name() != "mine.js" {
		t.Fatalf("node_modules holds %v, want only the workspace's mine.js", ents)
	}
	if got, err := os.ReadFile(filepath.Join(dst, "node_modules", "mine.js")); err != nil || !bytes.Equal(got, mine) {
		t.Fatalf("the workspace's file: %q, %v", got, err)
	}
	if res.Conflicts != 1 || len(res.ConflictPaths) != 1 || !strings.HasSuffix(res.ConflictPaths[0], "/node_modules") {
		t.Fatalf("conflicts %d %q, want 1 for node_modules", res.Conflicts, res.ConflictPaths)
	}
	if tmp := tempFiles(t, dst); len(tmp) != 0 {
		t.Fatalf("temporary entries left: %q", tmp)
	}
	// Everything else as backed up.
	want, got := snapshotDir(t, src), snapshotDir(t, dst)
	for p := range want {
		if p == "node_modules" || strings.HasPrefix(p, "node_modules/") {
			delete(want, p)
		}
	}
	for p := range got {
		if p == "node_modules" || strings.HasPrefix(p, "node_modules/") {
			delete(got, p)
		}
	}
	delete(want, "shared.txt") // its link count differs; content checked below
	delete(got, "shared.txt")
	compareDirs(t, want, got)
	if data, err := os.ReadFile(filepath.Join(dst, "shared.txt")); err != nil || !bytes.Equal(data, genData(27, 90)) {
		t.Errorf("shared.txt: %d bytes, %v", len(data), err)
	}
}

// TestCancelledLateDirectoryLeavesNothing: a restore cancelled just before
// the staged directory's rename removes it, and leaves no temporary entry.
func TestCancelledLateDirectoryLeavesNothing(t *testing.T) {
	src, _, _ := lateDirTree(t)
	r, _ := newMemRepo(t)
	snap := doBackup(t, r, src).Snapshot
	dst := filepath.Join(t.TempDir(), "ws")
	opts := readyOpts(snap)
	opts.Late = []string{"node_modules/"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sawStaged := false
	testHookLateRename = func(p string) error {
		if !strings.HasSuffix(p, "/node_modules") {
			return nil
		}
		sawStaged = len(tempFiles(t, dst)) > 0
		cancel()
		return ctx.Err()
	}
	t.Cleanup(func() { testHookLateRename = nil })
	_, err := Restore(ctx, r, snap, dst, opts)
	t.Cleanup(func() { chmodTreeWritable(dst) })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled restore: %v", err)
	}
	if !sawStaged {
		t.Fatal("no staged directory existed when the restore was cancelled")
	}
	if tmp := tempFiles(t, dst); len(tmp) != 0 {
		t.Fatalf("temporary entries left after a cancelled restore: %q", tmp)
	}
	if _, err := os.Lstat(filepath.Join(dst, "node_modules")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("node_modules after a cancelled restore: %v", err)
	}
}

// TestPriorityWinsOverLate: a priority pattern that matches a late
// directory keeps it early.
func TestPriorityWinsOverLate(t *testing.T) {
	src, _, staged := lateDirTree(t)
	r, _ := newMemRepo(t)
	snap := doBackup(t, r, src).Snapshot
	dst := filepath.Join(t.TempDir(), "ws")
	opts := readyOpts(snap)
	opts.Late = []string{"node_modules/", "*.log"}
	opts.Priority = append(opts.Priority, "node_modules/", "debug.log")
	opts.Ready = func(int64) {
		for p, data := range staged {
			if got, err := os.ReadFile(filepath.Join(dst, p)); err != nil || !bytes.Equal(got, data) {
				t.Errorf("at READY, %s (priority over late): %d bytes, %v", p, len(got), err)
			}
		}
		if _, err := os.Stat(filepath.Join(dst, "debug.log")); err != nil {
			t.Errorf("at READY, debug.log (priority over late): %v", err)
		}
	}
	_, err := Restore(context.Background(), r, snap, dst, opts)
	must(t, err)
	t.Cleanup(func() { chmodTreeWritable(dst) })
	compareDirs(t, snapshotDir(t, src), snapshotDir(t, dst))
}

// TestLateDirectorySwappedForALinkIsNotRenamed: the workspace's owner
// moves the staged directory away and puts a link to a directory outside
// the target at its temporary name just before the rename: nothing is
// renamed into place, nothing outside is touched, and it is a conflict.
func TestLateDirectorySwappedForALinkIsNotRenamed(t *testing.T) {
	src, _, _ := lateDirTree(t)
	r, _ := newMemRepo(t)
	snap := doBackup(t, r, src).Snapshot
	dst := filepath.Join(t.TempDir(), "ws")
	outside := t.TempDir()
	opts := readyOpts(snap)
	opts.Late = []string{"node_modules/"}
	testHookLateRename = func(p string) error {
		if !strings.HasSuffix(p, "/node_modules") {
			return nil
		}
		tmp := tempFiles(t, dst)
		if len(tmp) != 1 {
			t.Fatalf("before the rename, temporary entries %q", tmp)
		}
		must(t, os.Rename(tmp[0], filepath.Join(dst, "moved-away")))
		must(t, os.Symlink(outside, tmp[0]))
		return nil
	}
	t.Cleanup(func() { testHookLateRename = nil })
	res, err := Restore(context.Background(), r, snap, dst, opts)
	must(t, err)
	t.Cleanup(func() { chmodTreeWritable(dst) })
	if res.Conflicts != 1 || !strings.HasSuffix(res.ConflictPaths[0], "/node_modules") {
		t.Fatalf("conflicts %d %q, want node_modules", res.Conflicts, res.ConflictPaths)
	}
	if _, err := os.Lstat(filepath.Join(dst, "node_modules")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("node_modules after the swap: %v", err)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Fatalf("the directory outside holds %v", ents)
	}
}
