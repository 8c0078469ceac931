package sync

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/backupd/backupd/pkg/placement"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/mem"
)

// genData returns n bytes that compress somewhat (like real files).
func genData(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	words := []string{"func ", "return ", "if err != nil {", "}\n", "package ", "import ", "x := ", "for i := range ", "\t", "0x", "//"}
	var b bytes.Buffer
	b.Grow(n)
	for b.Len() < n {
		if r.IntN(4) == 0 {
			var raw [8]byte
			for i := range raw {
				raw[i] = byte(r.Uint32())
			}
			b.Write(raw[:])
		} else {
			b.WriteString(words[r.IntN(len(words))])
		}
	}
	return b.Bytes()[:n]
}

func writeFile(t testing.TB, path string, data []byte, mode os.FileMode, mtime time.Time) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

// makeTree builds a tree with every kind of entry this version keeps.
func makeTree(t testing.TB, root string) {
	t.Helper()
	mt := func(i int) time.Time { return time.Unix(1700000000+int64(i)*3600, int64(i)*123456789+1) }
	sizes := []int{0, 1, 100, 4095, 4096, 512 << 10, 512<<10 + 1, 1 << 20, 3<<20 + 17, 21 << 20}
	for i, n := range sizes {
		writeFile(t, filepath.Join(root, "sizes", "f"+strings.Repeat("x", i)), genData(uint64(i), n), 0o644, mt(i))
	}
	deep := root
	for i := range 40 {
		deep = filepath.Join(deep, "d"+string(rune('a'+i%26)))
	}
	writeFile(t, filepath.Join(deep, "leaf.txt"), []byte("deep"), 0o640, mt(50))
	for _, name := range []string{"ünïcødé ✓.txt", "日本語", "with space", "new\nline", "tab\there", "-dash", "\xff\xfeinvalid-utf8", ".hidden", "x;y&z|$(echo)", "quote'\"", "a\\b"} {
		writeFile(t, filepath.Join(root, "names", name), []byte(name), 0o600, mt(60))
	}
	for i := range 600 {
		writeFile(t, filepath.Join(root, "many", "small", "f"+strings.Repeat("0", i%5)+string(rune('a'+i%26))+"-"+strconv.Itoa(i)), genData(uint64(1000+i), i%300), 0o644, mt(i%24))
	}
	// Same content twice: stored once.
	writeFile(t, filepath.Join(root, "dup", "one"), genData(99, 2<<20), 0o644, mt(70))
	writeFile(t, filepath.Join(root, "dup", "two"), genData(99, 2<<20), 0o755, mt(71))
	// Special permission bits.
	writeFile(t, filepath.Join(root, "perm", "ro"), []byte("read only"), 0o444, mt(80))
	writeFile(t, filepath.Join(root, "perm", "exec"), []byte("#!/bin/sh\n"), 0o755, mt(81))
	writeFile(t, filepath.Join(root, "perm", "none"), []byte("x"), 0o000, mt(82))
	writeFile(t, filepath.Join(root, "perm", "setuid"), []byte("x"), 0o4755|os.ModeSetuid, mt(83))
	must(t, os.Chmod(filepath.Join(root, "perm", "setuid"), 0o755|os.ModeSetuid|os.ModeSetgid))
	must(t, os.MkdirAll(filepath.Join(root, "perm", "sticky"), 0o755))
	must(t, os.Chmod(filepath.Join(root, "perm", "sticky"), 0o777|os.ModeSticky))
	must(t, os.MkdirAll(filepath.Join(root, "perm", "rodir"), 0o755))
	writeFile(t, filepath.Join(root, "perm", "rodir", "inside"), []byte("in a read-only dir"), 0o644, mt(84))
	must(t, os.Chmod(filepath.Join(root, "perm", "rodir"), 0o555))
	// Empty directories, nested too.
	must(t, os.MkdirAll(filepath.Join(root, "empty", "nested", "deeper"), 0o755))
	must(t, os.MkdirAll(filepath.Join(root, "empty2"), 0o700))
	// Symlinks: to a file, to a directory, dangling, absolute, to itself.
	must(t, os.MkdirAll(filepath.Join(root, "links"), 0o755))
	must(t, os.Symlink("../sizes/fx", filepath.Join(root, "links", "tofile")))
	must(t, os.Symlink("../names", filepath.Join(root, "links", "todir")))
	must(t, os.Symlink("does/not/exist", filepath.Join(root, "links", "dangling")))
	must(t, os.Symlink("/etc/passwd", filepath.Join(root, "links", "absolute")))
	must(t, os.Symlink("self", filepath.Join(root, "links", "self")))
	for i, l := range []string{"tofile", "todir", "dangling", "absolute", "self"} {
		ts := []unix.Timespec{unix.NsecToTimespec(mt(90 + i).UnixNano()), unix.NsecToTimespec(mt(90 + i).UnixNano())}
		must(t, unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(root, "links", l), ts, unix.AT_SYMLINK_NOFOLLOW))
	}
	// Directory mtimes last (writing inside changes them).
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chtimes(p, mt(100), mt(100))
		}
		return nil
	})
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

type entry struct {
	typ    fs.FileMode
	mode   uint32
	mtime  int64
	size   int64
	sum    [32]byte
	target string
}

// snapshotDir records everything a restore must reproduce.
func snapshotDir(t testing.TB, root string) map[string]entry {
	t.Helper()
	m := map[string]entry{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		e := entry{typ: d.Type(), mode: st.Mode & 07777, mtime: st.Mtim.Nano()}
		switch {
		case d.Type().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			e.size, e.sum = int64(len(data)), sha256.Sum256(data)
		case d.Type()&fs.ModeSymlink != 0:
			e.target, _ = os.Readlink(p)
			e.mode = 0 // link permissions are not meaningful on Linux
		}
		if rel == "." {
			e.mtime = 0 // the target's own mtime is checked separately
		}
		m[rel] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func compareDirs(t testing.TB, want, got map[string]entry) {
	t.Helper()
	for p, w := range want {
		g, ok := got[p]
		if !ok {
			t.Errorf("missing after restore: %q", p)
			continue
		}
		if g != w {
			t.Errorf("%q differs:\n want %+v\n  got %+v", p, w, g)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("unexpected after restore: %q", p)
		}
	}
}

func newMemRepo(t testing.TB) (*repo.Repository, storage.Storage) {
	t.Helper()
	root := mem.New()
	return openRepo(t, root), root
}

func openRepo(t testing.TB, root storage.Storage) *repo.Repository {
	t.Helper()
	st, err := placement.NewPrefixPerOwner(root).Owner(context.Background(), "owner1", true)
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.Load(context.Background(), st, true)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func doBackup(t testing.TB, r *repo.Repository, dir string) *BackupResult {
	t.Helper()
	res, err := Backup(context.Background(), r, dir, BackupOptions{Owner: "owner1", Workspace: "ws1"})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func chmodTreeWritable(root string) {
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			syscall.Chmod(p, 0o755)
		}
		return nil
	})
}
