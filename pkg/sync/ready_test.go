package sync

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	gosync "sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/backupd/backupd/pkg/repo"
)

// readyTree is a workspace for ready restores: early files (small, below
// .git, matching a priority pattern, listed as recent) and late ones (big),
// with their contents by relative path.
func readyTree(t *testing.T) (src string, early, late map[string][]byte) {
	t.Helper()
	src = t.TempDir()
	mt := time.Unix(1.5e9, 0)
	early = map[string][]byte{
		"small.txt":             genData(1, 100),
		"dir/sub/tiny.go":       genData(2, 4000),
		".git/objects/pack/p1":  genData(3, 3<<20),
		"vendor/.git/HEAD":      genData(4, 41),
		"prio/important.bin":    genData(5, 2<<20),
		"dir/wanted.db":         genData(6, 2<<20),
		"dir/recent.log":        genData(7, 2<<20),
		"readonly/small.txt":    genData(8, 10),
		"exactly-threshold.bin": genData(9, 1<<20),
	}
	late = map[string][]byte{
		"big/late1.bin":      genData(10, 3<<20),
		"big/late2.bin":      genData(11, 9<<20), // more than one chunk
		"dir/sub/late3.bin":  genData(12, 1<<20+1),
		"readonly/late4.bin": genData(13, 2<<20),
	}
	for p, data := range early {
		writeFile(t, filepath.Join(src, p), data, 0o644, mt)
	}
	for p, data := range late {
		writeFile(t, filepath.Join(src, p), data, 0o640, mt)
	}
	must(t, os.Symlink("../small.txt", filepath.Join(src, "dir", "link")))
	must(t, os.Chmod(filepath.Join(src, "readonly"), 0o555))
	for _, d := range []string{"big", "dir/sub", "dir", "readonly", "prio"} {
		must(t, os.Chtimes(filepath.Join(src, d), mt, mt))
	}
	t.Cleanup(func() { chmodTreeWritable(src) })
	return src, early, late
}

// readyOpts are the options of the ready restores of readyTree's snapshot,
// whose recent list is set to dir/recent.log (the backup lists every file
// of so small a tree).
func readyOpts(snap *repo.Snapshot) RestoreOptions {
	snap.Recent = []string{"dir/recent.log"}
	return RestoreOptions{ReadyBeforeComplete: true, Priority: []string{"prio/", "*.db"}}
}

// tempFiles lists the ready restore's temporary files below root.
func tempFiles(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), tmpPrefix) {
			out = append(out, p)
		}
		return nil
	})
	return out
}

func TestReadyRestoreWritesEarlyFilesBeforeReady(t *testing.T) {
	withRenameFallback(t, testReadyRestoreWritesEarlyFilesBeforeReady)
}

func testReadyRestoreWritesEarlyFilesBeforeReady(t *testing.T) {
	src, early, late := readyTree(t)
	r, _ := newMemRepo(t)
	res := doBackup(t, r, src)
	snap := res.Snapshot
	if len(snap.Recent) == 0 {
		t.Fatal("the backup recorded no recent files")
	}
	dst := filepath.Join(t.TempDir(), "ws")
	opts := readyOpts(snap)
	var lateBytes int64
	for _, data := range late {
		lateBytes += int64(len(data))
	}
	readyCalls := 0
	opts.Ready = func(left int64) {
		readyCalls++
		if left != lateBytes {
			t.Errorf("Ready: %d bytes left, want %d", left, lateBytes)
		}
		for p, data := range early {
			got, err := os.ReadFile(filepath.Join(dst, p))
			if err != nil || !bytes.Equal(got, data) {
				t.Errorf("at READY, early file %s: %d bytes, %v; want its %d bytes", p, len(got), err, len(data))
			}
		}
		for p := range late {
			if _, err := os.Lstat(filepath.Join(dst, p)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("at READY, late file %s is already there (%v)", p, err)
			}
		}
		if target, err := os.Readlink(filepath.Join(dst, "dir", "link")); err != nil || target != "../small.txt" {
			t.Errorf("at READY, symlink: %q, %v", target, err)
		}
		if st, err := os.Stat(filepath.Join(dst, "readonly")); err != nil || st.Mode().Perm() != 0o555 {
			t.Errorf("at READY, directory readonly: %v, %v; want its mode 0555", st.Mode(), err)
		}
		if n := len(tempFiles(t, dst)); n != 0 {
			t.Errorf("at READY, %d temporary files", n)
		}
	}
	rres, err := Restore(context.Background(), r, snap, dst, opts)
	must(t, err)
	t.Cleanup(func() { chmodTreeWritable(dst) })
	if readyCalls != 1 {
		t.Fatalf("Ready called %d times", readyCalls)
	}
	if rres.Conflicts != 0 {
		t.Errorf("conflicts %d: %q", rres.Conflicts, rres.ConflictPaths)
	}
	// Everything as backed up, directory mtimes included, and no
	// temporary file left.
	compareDirs(t, snapshotDir(t, src), snapshotDir(t, dst))
}

func TestReadyRestoreKeepsTheWorkspacesFile(t *testing.T) {
	withRenameFallback(t, testReadyRestoreKeepsTheWorkspacesFile)
}

func testReadyRestoreKeepsTheWorkspacesFile(t *testing.T) {
	src, _, late := readyTree(t)
	r, _ := newMemRepo(t)
	snap := doBackup(t, r, src).Snapshot
	dst := filepath.Join(t.TempDir(), "ws")
	opts := readyOpts(snap)
	mine := []byte("the workspace's own file, written after READY")
	opts.Ready = func(int64) {
		// The workspace starts and writes where a late file goes.
		must(t, os.WriteFile(filepath.Join(dst, "big", "late1.bin"), mine, 0o600))
	}
	res, err := Restore(context.Background(), r, snap, dst, opts)
	must(t, err)
	t.Cleanup(func() { chmodTreeWritable(dst) })
	if got, err := os.ReadFile(filepath.Join(dst, "big", "late1.bin")); err != nil || !bytes.Equal(got, mine) {
		t.Fatalf("the workspace's file: %q, %v", got, err)
	}
	if res.Conflicts != 1 || len(res.ConflictPaths) != 1 || !strings.HasSuffix(res.ConflictPaths[0], "big/late1.bin") {
		t.Fatalf("conflicts %d %q, want 1 for big/late1.bin", res.Conflicts, res.ConflictPaths)
	}
	for p, data := range late {
		if p == "big/late1.bin" {
			continue
		}
		if got, err := os.ReadFile(filepath.Join(dst, p)); err != nil || !bytes.Equal(got, data) {
			t.Errorf("late file %s: %d bytes, %v", p, len(got), err)
		}
	}
	if tmp := tempFiles(t, dst); len(tmp) != 0 {
		t.Fatalf("temporary files left: %q", tmp)
	}
}

func TestCancelledReadyRestoreLeavesNoTemporaryFiles(t *testing.T) {
	src, _, _ := readyTree(t)
	r, _ := newMemRepo(t)
	snap := doBackup(t, r, src).Snapshot
	dst := filepath.Join(t.TempDir(), "ws")
	opts := readyOpts(snap)
	opts.Downloads = 1 // one late file at a time: the others' are to come
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sawTemp := false
	testHookLateRename = func(string) error {
		// The first late file is written under its temporary name: cancel
		// the restore there.
		sawTemp = len(tempFiles(t, dst)) > 0
		cancel()
		return ctx.Err()
	}
	t.Cleanup(func() { testHookLateRename = nil })
	_, err := Restore(ctx, r, snap, dst, opts)
	t.Cleanup(func() { chmodTreeWritable(dst) })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled ready restore: %v", err)
	}
	if !sawTemp {
		t.Fatal("no temporary file existed when the restore was cancelled")
	}
	if tmp := tempFiles(t, dst); len(tmp) != 0 {
		t.Fatalf("temporary files left after a cancelled restore: %q", tmp)
	}
}

// TestReadyRestoreNeverWritesThroughSwappedDirectories: the workspace's
// owner replaces the directory of a late file with a link to a directory
// outside, after READY (the directory is then opened again for its late
// files) and just before a late file's rename (its directory is open):
// nothing is ever written outside the target.
func TestReadyRestoreNeverWritesThroughSwappedDirectories(t *testing.T) {
	for _, when := range []string{"ready", "rename"} {
		t.Run(when, func(t *testing.T) {
			src, _, late := readyTree(t)
			r, _ := newMemRepo(t)
			snap := doBackup(t, r, src).Snapshot
			base := t.TempDir()
			out := outsideDir(t, base)
			dst := filepath.Join(base, "ws")
			opts := readyOpts(snap)
			// Two late files' commits may call the hook at once: swap once.
			var once gosync.Once
			swapped := false // read after Restore returns
			swapBig := func() {
				once.Do(func() {
					swapped = true
					must(t, os.Rename(filepath.Join(dst, "big"), filepath.Join(dst, "moved")))
					must(t, os.Symlink(out, filepath.Join(dst, "big")))
				})
			}
			if when == "ready" {
				opts.Ready = func(int64) { swapBig() }
			} else {
				testHookLateRename = func(p string) error {
					if strings.HasSuffix(p, "big/late1.bin") || strings.HasSuffix(p, "big/late2.bin") {
						swapBig()
					}
					return nil
				}
				t.Cleanup(func() { testHookLateRename = nil })
			}
			res, err := Restore(context.Background(), r, snap, dst, opts)
			t.Cleanup(func() { chmodTreeWritable(dst) })
			must(t, err)
			if !swapped {
				t.Fatal("the directory was never swapped")
			}
			ents, err := os.ReadDir(out)
			must(t, err)
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			if !slices.Equal(names, []string{"f", "sub"}) {
				t.Fatalf("outside the target: %q, want only [f sub]", names)
			}
			if got, err := os.ReadFile(filepath.Join(out, "f")); err != nil || string(got) != secret {
				t.Fatalf("outside file changed: %q, %v", got, err)
			}
			switch when {
			case "ready":
				// The directory is not where restore made it: its late
				// files are the workspace's conflicts.
				if res.Conflicts != 2 {
					t.Fatalf("conflicts %d %q, want big/late1.bin and big/late2.bin", res.Conflicts, res.ConflictPaths)
				}
			case "rename":
				// Renamed within the directory restore holds open, wherever
				// the workspace moved it.
				for _, name := range []string{"late1.bin", "late2.bin"} {
					if got, err := os.ReadFile(filepath.Join(dst, "moved", name)); err != nil || !bytes.Equal(got, late["big/"+name]) {
						t.Fatalf("moved/%s: %d bytes, %v", name, len(got), err)
					}
				}
			}
			if tmp := tempFiles(t, base); len(tmp) != 0 {
				t.Fatalf("temporary files left: %q", tmp)
			}
		})
	}
}

func TestReadyRestoreRefusesOverwrite(t *testing.T) {
	src, _, _ := readyTree(t)
	r, _ := newMemRepo(t)
	snap := doBackup(t, r, src).Snapshot
	_, err := Restore(context.Background(), r, snap, t.TempDir(), RestoreOptions{ReadyBeforeComplete: true, Overwrite: true})
	if err == nil {
		t.Fatal("ready restore with overwrite: no error")
	}
}

// TestReadyRestoreGivesWayToARemovedDirectory: the workspace removes the
// directory of a late file while restore writes it, before its temporary
// file is made or after (the temporary file with it): the file is a
// conflict and the restore goes on.
func TestReadyRestoreGivesWayToARemovedDirectory(t *testing.T) {
	// The hook sees big/late2.bin once in the walk, then at each open:
	// the second call is its creation, the third the open for its second
	// blob.
	for _, at := range []int{2, 3} {
		t.Run(fmt.Sprint(at), func(t *testing.T) {
			src, _, late := readyTree(t)
			r, _ := newMemRepo(t)
			snap := doBackup(t, r, src).Snapshot
			dst := filepath.Join(t.TempDir(), "ws")
			opts := readyOpts(snap)
			opts.Downloads = 1
			calls, temps := 0, 0
			testHookRestore = func(p string) {
				if strings.HasSuffix(p, "big/late2.bin") {
					if calls++; calls == at {
						temps = len(tempFiles(t, filepath.Join(dst, "big")))
						must(t, os.RemoveAll(filepath.Join(dst, "big")))
					}
				}
			}
			t.Cleanup(func() { testHookRestore = nil })
			res, err := Restore(context.Background(), r, snap, dst, opts)
			t.Cleanup(func() { chmodTreeWritable(dst) })
			must(t, err)
			if calls < at {
				t.Fatalf("big/late2.bin seen %d times by the hook, want at least %d (more than one blob)", calls, at)
			}
			if at == 3 && temps == 0 {
				t.Fatal("no temporary file when the directory was removed")
			}
			if !slices.ContainsFunc(res.ConflictPaths, func(p string) bool { return strings.HasSuffix(p, "big/late2.bin") }) {
				t.Fatalf("conflicts %d %q, want big/late2.bin among them", res.Conflicts, res.ConflictPaths)
			}
			if got, err := os.ReadFile(filepath.Join(dst, "dir/sub/late3.bin")); err != nil || !bytes.Equal(got, late["dir/sub/late3.bin"]) {
				t.Fatalf("dir/sub/late3.bin: %d bytes, %v", len(got), err)
			}
			if tmp := tempFiles(t, dst); len(tmp) != 0 {
				t.Fatalf("temporary files left: %q", tmp)
			}
		})
	}
}

// withRenameFallback runs test as is and again as on a file system
// without RENAME_NOREPLACE (late files then link into place, late
// directories rename after a check).
func withRenameFallback(t *testing.T, test func(*testing.T)) {
	t.Run("renameat2", test)
	t.Run("without-noreplace", func(t *testing.T) {
		var calls atomic.Int32 // late files commit in parallel
		old := renameNoReplace
		renameNoReplace = func(int, string, string) error { calls.Add(1); return unix.EINVAL }
		t.Cleanup(func() { renameNoReplace = old })
		test(t)
		if calls.Load() == 0 {
			t.Fatal("no late entry was renamed into place")
		}
	})
}
