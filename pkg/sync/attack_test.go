package sync

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	gosync "sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/repo"
)

// Attacks by a workspace's owner, who controls the directories backup and
// restore work in (they run as root), and by crafted stored objects.

const secret = "SECRET: outside the workspace"

// outsideDir makes a directory outside the workspace that mirrors the
// workspace's names, full of secrets.
func outsideDir(t *testing.T, base string) string {
	t.Helper()
	out := filepath.Join(base, "outside")
	writeFile(t, filepath.Join(out, "sub", "f"), []byte(secret), 0o600, time.Unix(1e9, 0))
	writeFile(t, filepath.Join(out, "f"), []byte(secret), 0o600, time.Unix(1e9, 0))
	return out
}

// snapshotHolds reports whether any file of the snapshot tree holds data.
func snapshotHolds(t *testing.T, r *repo.Repository, tree chunk.ID, data []byte) bool {
	t.Helper()
	ctx := context.Background()
	tr, err := r.LoadTree(ctx, tree)
	must(t, err)
	for _, n := range tr.Nodes {
		switch n.Type {
		case repo.TypeDir:
			if snapshotHolds(t, r, n.Subtree, data) {
				return true
			}
		case repo.TypeFile:
			for _, id := range n.Content {
				if id == chunk.Hash(data) {
					return true
				}
			}
		}
	}
	return false
}

// swap replaces dir by a symlink to target and back, once.
func swap(dir, target string) func() { return swapAt(unix.AT_FDCWD, dir, target) }

// swapAt is swap for the entry name of the directory open as dirfd: every
// step relative to that directory, so that it stays in it however the
// path to it is swapped meanwhile.
func swapAt(dirfd int, name, target string) func() {
	moved := name + ".moved"
	if unix.Renameat(dirfd, name, dirfd, moved) != nil {
		return func() {}
	}
	unix.Symlinkat(target, dirfd, name)
	return func() {
		unix.Unlinkat(dirfd, name, 0)
		unix.Renameat(dirfd, moved, dirfd, name)
	}
}

// TestBackupNeverReadsThroughSwappedDirectories swaps a directory for a
// link out of the workspace at the moment the backup opens a file in it,
// and at the moment it opens the directory itself: the backup reads the
// directory it found (or leaves the entry out), never the outside.
func TestBackupNeverReadsThroughSwappedDirectories(t *testing.T) {
	base := t.TempDir()
	src, out := filepath.Join(base, "ws"), outsideDir(t, base)
	writeFile(t, filepath.Join(src, "w", "sub", "f"), []byte("inside"), 0o644, time.Unix(1e9, 0))
	writeFile(t, filepath.Join(src, "w", "f"), []byte("inside too"), 0o644, time.Unix(1e9, 0))
	r, _ := newMemRepo(t)

	var undo func()
	testHookBeforeOpen = func(p string) {
		if p == filepath.Join(src, "w", "sub", "f") && undo == nil {
			undo = swap(filepath.Join(src, "w"), out) // w/sub/f now names outside/sub/f
		}
	}
	t.Cleanup(func() { testHookBeforeOpen, testHookBeforeOpenDir = nil, nil })
	res := doBackup(t, r, src)
	undo()
	if snapshotHolds(t, r, res.Snapshot.Tree, []byte(secret)) {
		t.Fatal("backup read a file outside the workspace through a directory swapped for a link")
	}
	if !snapshotHolds(t, r, res.Snapshot.Tree, []byte("inside")) {
		t.Fatal("backup lost the file it opened in the directory it walked")
	}

	testHookBeforeOpen = nil
	undo = nil
	testHookBeforeOpenDir = func(p string) {
		if p == filepath.Join(src, "w", "sub") && undo == nil {
			undo = swap(p, filepath.Join(out, "sub"))
		}
	}
	var warned atomic.Int64
	res, err := Backup(context.Background(), r, src, BackupOptions{Owner: "owner1", Workspace: "ws1", Force: true,
		Warn: func(p string, err error) {
			if strings.Contains(err.Error(), "replaced") {
				warned.Add(1)
			}
		}})
	must(t, err)
	undo()
	if snapshotHolds(t, r, res.Snapshot.Tree, []byte(secret)) {
		t.Fatal("backup walked into a directory swapped for a link")
	}
	if warned.Load() != 1 || res.Snapshot.Stats.Skipped != 1 {
		t.Fatalf("swapped directory: %d warnings, %d skipped; want it left out with a warning", warned.Load(), res.Snapshot.Stats.Skipped)
	}
}

// TestBackupRacingSwaps loops swaps of a directory and a file in it for
// links out of the workspace while backups run, and checks no snapshot
// ever holds outside content. The file is swapped through the directory's
// descriptor: by its path, the swapper's own renames could go through the
// directory's link at one end and not at the other (a swap of the
// directory between the kernel's two lookups), and so move an outside
// secret into the workspace, where backing it up would be right.
func TestBackupRacingSwaps(t *testing.T) {
	base := t.TempDir()
	src, out := filepath.Join(base, "ws"), outsideDir(t, base)
	for i := range 50 {
		writeFile(t, filepath.Join(src, "w", "sub", "g"+string(rune('a'+i%26))+strings.Repeat("x", i/26)), genData(uint64(i), 100), 0o644, time.Unix(1e9, 0))
	}
	writeFile(t, filepath.Join(src, "w", "sub", "f"), []byte("inside"), 0o644, time.Unix(1e9, 0))
	writeFile(t, filepath.Join(src, "w", "f"), []byte("inside"), 0o644, time.Unix(1e9, 0))
	r, _ := newMemRepo(t)
	stop := make(chan struct{})
	var wg gosync.WaitGroup
	var swaps atomic.Int64
	wfd, err := unix.Open(filepath.Join(src, "w"), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, err)
	defer unix.Close(wfd)
	for _, swapOnce := range []func() func(){
		func() func() { return swap(filepath.Join(src, "w"), out) },
		func() func() { return swapAt(wfd, "f", filepath.Join(out, "f")) },
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				swapOnce()()
				swaps.Add(1)
			}
		}()
	}
	// At least 40 backups, and on until the swappers have had their turns
	// (a loaded machine may starve them for a while).
	for i := 0; i < 40 || (swaps.Load() < 200 && i < 4000); i++ {
		res, err := Backup(context.Background(), r, src, BackupOptions{Owner: "owner1", Workspace: "ws1", Force: true})
		if err != nil {
			continue // a swap may make a backup fail; it must never read outside
		}
		if snapshotHolds(t, r, res.Snapshot.Tree, []byte(secret)) {
			close(stop)
			wg.Wait()
			t.Fatal("a snapshot holds a file from outside the workspace")
		}
	}
	close(stop)
	wg.Wait()
	if swaps.Load() < 200 {
		t.Fatalf("only %d swaps: race not exercised", swaps.Load())
	}
}

// TestRestoreNeverWritesThroughSwappedDirectories restores over an
// existing workspace whose owner swaps a directory for a link out of it at
// the moment restore creates a file in it: the file lands in the
// directory restore opened, and nothing outside changes.
func TestRestoreNeverWritesThroughSwappedDirectories(t *testing.T) {
	base := t.TempDir()
	src, out := filepath.Join(base, "src"), filepath.Join(base, "outside")
	must(t, os.MkdirAll(filepath.Join(out, "w"), 0o755))
	writeFile(t, filepath.Join(src, "w", "new"), []byte("restored"), 0o644, time.Unix(1e9, 0))
	writeFile(t, filepath.Join(src, "w", "sub", "new"), []byte("restored"), 0o644, time.Unix(1e9, 0))
	r, _ := newMemRepo(t)
	doBackup(t, r, src)
	for _, stage := range []string{"entry", "file"} {
		t.Run(stage, func(t *testing.T) {
			dst := filepath.Join(base, "dst-"+stage)
			must(t, os.MkdirAll(filepath.Join(dst, "w"), 0o755)) // the workspace's own directory
			var undo func()
			testHookRestore = func(p string) {
				hit := p == filepath.Join(dst, "w", "sub") // before the entry is made
				if stage == "file" {
					hit = p == filepath.Join(dst, "w", "new") && undo == nil && strings.HasSuffix(p, "new")
				}
				if hit && undo == nil {
					undo = swap(filepath.Join(dst, "w"), out)
				}
			}
			t.Cleanup(func() { testHookRestore = nil })
			_, err := Restore(context.Background(), r, latest(t, r), dst, RestoreOptions{Overwrite: true})
			if undo == nil {
				t.Fatal("hook never ran")
			}
			undo()
			if names, _ := os.ReadDir(filepath.Join(out, "w")); len(names) != 0 {
				t.Fatalf("restore wrote outside its target: %v", names)
			}
			if err == nil {
				if b, err := os.ReadFile(filepath.Join(dst, "w", "sub", "new")); err != nil || string(b) != "restored" {
					t.Fatalf("restore succeeded but w/sub/new is %q, %v", b, err)
				}
			}
		})
	}
}

// TestRestoreRacingSwaps loops swaps of the target's directories for links
// out of it while restores over it run.
func TestRestoreRacingSwaps(t *testing.T) {
	base := t.TempDir()
	src, out := filepath.Join(base, "src"), filepath.Join(base, "outside")
	for i := range 30 {
		writeFile(t, filepath.Join(src, "w", "d"+string(rune('a'+i%5)), "f"+string(rune('a'+i))), genData(uint64(i), 3000), 0o644, time.Unix(1e9, 0))
	}
	must(t, os.MkdirAll(filepath.Join(out, "w"), 0o755))
	r, _ := newMemRepo(t)
	doBackup(t, r, src)
	snap := latest(t, r)
	dst := filepath.Join(base, "dst")
	must(t, os.MkdirAll(filepath.Join(dst, "w", "da"), 0o755))
	stop := make(chan struct{})
	var swaps atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			swap(filepath.Join(dst, "w"), out)()
			swap(filepath.Join(dst, "w", "da"), out)()
			swaps.Add(1)
		}
	}()
	ok := 0
	// At least 40 restores, and on until the swapper has had its turns.
	for i := 0; i < 40 || (swaps.Load() < 200 && i < 4000); i++ {
		if _, err := Restore(context.Background(), r, snap, dst, RestoreOptions{Overwrite: true, Delete: true}); err == nil {
			ok++
		}
	}
	close(stop)
	<-done
	if n := swaps.Load(); n < 200 {
		t.Fatalf("only %d swaps: race not exercised", n)
	}
	if names, _ := os.ReadDir(filepath.Join(out, "w")); len(names) != 0 {
		t.Fatalf("restore wrote outside its target: %v", names)
	}
	if names, _ := os.ReadDir(out); len(names) != 1 {
		t.Fatalf("restore changed the outside directory: %v", names)
	}
	t.Logf("%d restores succeeded under %d swaps", ok, swaps.Load())
}

// TestOverwriteNeverChangesAHardLinkedFile: an existing file in the target
// that looks right (same size and mtime) but is a hard link to a file
// outside is replaced, and the outside file keeps its content, owner,
// mode, times and extended attributes.
func TestOverwriteNeverChangesAHardLinkedFile(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "src")
	mtime := time.Unix(1.5e9, 123)
	content := []byte("the snapshot's content")
	writeFile(t, filepath.Join(src, "f"), content, 0o755, mtime)
	must(t, os.Chown(filepath.Join(src, "f"), 4321, 4321)) // before chmod: chown clears setuid
	must(t, os.Chmod(filepath.Join(src, "f"), 0o755|os.ModeSetuid))
	must(t, unix.Setxattr(filepath.Join(src, "f"), "user.snap", []byte("s"), 0))
	must(t, os.Chtimes(filepath.Join(src, "f"), mtime, mtime))
	r, _ := newMemRepo(t)
	doBackup(t, r, src)
	snap := latest(t, r)

	for _, verify := range []bool{false, true} {
		for _, sameContent := range []bool{true, false} {
			dst := filepath.Join(base, "dst", strings.ReplaceAll(t.Name(), "/", "_")+map[bool]string{true: "v", false: "n"}[verify]+map[bool]string{true: "s", false: "d"}[sameContent])
			victim := dst + "-victim"
			data := content
			if !sameContent {
				data = bytes.Repeat([]byte("x"), len(content))
			}
			writeFile(t, victim, data, 0o640, mtime) // same size and mtime as the snapshot's
			must(t, unix.Setxattr(victim, "user.victim", []byte("v"), 0))
			must(t, os.Chown(victim, 1111, 2222))
			must(t, os.MkdirAll(dst, 0o755))
			must(t, os.Link(victim, filepath.Join(dst, "f")))
			var before unix.Stat_t
			must(t, unix.Lstat(victim, &before))

			_, err := Restore(context.Background(), r, snap, dst, RestoreOptions{Overwrite: true, Verify: verify})
			must(t, err)

			var after unix.Stat_t
			must(t, unix.Lstat(victim, &after))
			got, _ := os.ReadFile(victim)
			x := make([]byte, 64)
			n, _ := unix.Getxattr(victim, "user.victim", x)
			if !bytes.Equal(got, data) || after.Uid != 1111 || after.Gid != 2222 || after.Mode != before.Mode ||
				after.Mtim != before.Mtim || string(x[:max(n, 0)]) != "v" {
				t.Fatalf("verify=%v same=%v: the file outside changed: %+v -> %+v, content %q, xattr %q", verify, sameContent, before, after, got, x[:max(n, 0)])
			}
			if n, err := unix.Getxattr(victim, "user.snap", x); err == nil {
				t.Fatalf("snapshot's xattr written to the outside file: %q", x[:n])
			}
			var st unix.Stat_t
			must(t, unix.Lstat(filepath.Join(dst, "f"), &st))
			b, _ := os.ReadFile(filepath.Join(dst, "f"))
			if st.Nlink != 1 || !bytes.Equal(b, content) || st.Uid != 4321 || st.Mode&07777 != 0o4755 {
				t.Fatalf("restored f: nlink %d, uid %d, mode %o, content %q", st.Nlink, st.Uid, st.Mode&07777, b)
			}
		}
	}
}

func latest(t *testing.T, r *repo.Repository) *repo.Snapshot {
	t.Helper()
	snap, _, err := r.FindSnapshot(context.Background(), "ws1", "latest")
	must(t, err)
	return snap
}

// craftSnapshot stores trees (leaves first; the last is the root) as one
// tree pack with its index and a snapshot naming the root.
func craftSnapshot(t *testing.T, r *repo.Repository, trees []*repo.Tree) *repo.Snapshot {
	t.Helper()
	ctx := context.Background()
	pb := repo.NewPackBuilder(1 << 20)
	var root chunk.ID
	for _, tr := range trees {
		b := repo.EncodeTree(tr)
		root = chunk.Hash(b)
		pb.Add(root, repo.TreeBlob, chunk.Raw, b, len(b))
	}
	data, id, entries := pb.Finish()
	must(t, r.SavePack(ctx, data, id, entries))
	_, err := r.SaveIndex(ctx, []repo.PackIndex{{Pack: id, Blobs: entries}})
	must(t, err)
	snap := &repo.Snapshot{Time: time.Now(), Tree: root, Owner: "owner1", Workspace: "bomb", RootMode: 0o755}
	_, err = r.SaveSnapshot(ctx, snap)
	must(t, err)
	return snap
}

// TestRestoreRefusesExpansionBombs: a tree naming the same subtree twice at
// each of 40 levels (2^40 entries from 40 small trees), and a chain of
// directories deeper than the limit, are refused before anything is
// written.
func TestRestoreRefusesExpansionBombs(t *testing.T) {
	r, _ := newMemRepo(t)
	var wide []*repo.Tree
	prev := &repo.Tree{}
	wide = append(wide, prev)
	for range 40 {
		sub := chunk.Hash(repo.EncodeTree(prev))
		prev = &repo.Tree{Nodes: []repo.Node{{Name: "a", Type: repo.TypeDir, Mode: 0o755, Subtree: sub}, {Name: "b", Type: repo.TypeDir, Mode: 0o755, Subtree: sub}}}
		wide = append(wide, prev)
	}
	var deep []*repo.Tree
	prev = &repo.Tree{}
	deep = append(deep, prev)
	for range repo.MaxTreeDepth + 1 {
		prev = &repo.Tree{Nodes: []repo.Node{{Name: "d", Type: repo.TypeDir, Mode: 0o755, Subtree: chunk.Hash(repo.EncodeTree(prev))}}}
		deep = append(deep, prev)
	}
	for name, trees := range map[string][]*repo.Tree{"wide": wide, "deep": deep} {
		snap := craftSnapshot(t, r, trees)
		dst := t.TempDir()
		_, err := Restore(context.Background(), r, snap, dst, RestoreOptions{})
		if !errors.Is(err, repo.ErrTooLarge) {
			t.Fatalf("%s bomb: restore = %v, want ErrTooLarge", name, err)
		}
		if names, _ := os.ReadDir(dst); len(names) != 0 {
			t.Fatalf("%s bomb: restore wrote %d entries before refusing", name, len(names))
		}
	}
	// A repeated subtree within the limits is restored as often as named.
	snap := craftSnapshot(t, r, wide[:4]) // 2+4+8 directories
	dst := t.TempDir()
	res, err := Restore(context.Background(), r, snap, dst, RestoreOptions{})
	must(t, err)
	if res.Dirs != 1+2+4+8 {
		t.Fatalf("restored %d directories, want 15", res.Dirs)
	}
}

// TestBackupRefusesOversizedDirectories: a directory of more entries than
// one tree may hold fails the backup with an error naming it (the format
// has no way to keep it whole, and leaving entries out silently would lose
// data), and no snapshot is written.
func TestBackupRefusesOversizedDirectories(t *testing.T) {
	base, err := os.MkdirTemp("/dev/shm", "backupd-test-") // 131k files: tmpfs, not this VM's disk
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(base) })
	big := filepath.Join(base, "ws", "big")
	must(t, os.MkdirAll(big, 0o755))
	for i := range repo.MaxTreeNodes + 1 {
		f, err := os.Create(filepath.Join(big, strconv.Itoa(i)))
		must(t, err)
		f.Close()
	}
	r, _ := newMemRepo(t)
	_, err = Backup(context.Background(), r, filepath.Join(base, "ws"), BackupOptions{Owner: "owner1", Workspace: "ws1"})
	if err == nil || !strings.Contains(err.Error(), big) || !strings.Contains(err.Error(), strconv.Itoa(repo.MaxTreeNodes)) {
		t.Fatalf("backup of a directory of %d entries: %v", repo.MaxTreeNodes+1, err)
	}
	if refs, _ := r.ListSnapshots(context.Background(), "ws1"); len(refs) != 0 {
		t.Fatal("a snapshot was written")
	}
}

// TestBackupLeavesOutHardLinkedSymlinks: anyone may hard-link a symlink
// (its mode is 0777), so a workspace can hold a second name of a symlink
// outside it; backup neither reads nor keeps it.
func TestBackupLeavesOutHardLinkedSymlinks(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "ws")
	writeFile(t, filepath.Join(src, "f"), []byte("x"), 0o644, time.Unix(1e9, 0))
	must(t, os.Symlink("/outside/target", filepath.Join(base, "outside-link")))
	must(t, os.Link(filepath.Join(base, "outside-link"), filepath.Join(src, "linked"))) // links the symlink itself
	must(t, os.Symlink("f", filepath.Join(src, "own")))
	r, _ := newMemRepo(t)
	var warned []string
	res, err := Backup(context.Background(), r, src, BackupOptions{Owner: "owner1", Workspace: "ws1",
		Warn: func(p string, err error) { warned = append(warned, p+": "+err.Error()) }})
	must(t, err)
	tr, err := r.LoadTree(context.Background(), res.Snapshot.Tree)
	must(t, err)
	var names []string
	for _, n := range tr.Nodes {
		names = append(names, n.Name)
	}
	if strings.Join(names, ",") != "f,own" || len(warned) != 1 || !strings.Contains(warned[0], "linked") || res.Snapshot.Stats.Skipped != 1 {
		t.Fatalf("entries %v, warnings %q, skipped %d", names, warned, res.Snapshot.Stats.Skipped)
	}
}
