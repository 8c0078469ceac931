package local_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/local"
	"github.com/backupd/backupd/pkg/storage/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Storage { return newStorage(t, t.TempDir()) })
}

func newStorage(t *testing.T, dir string) *local.Storage {
	t.Helper()
	s, err := local.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func put(t *testing.T, s storage.Storage, key string, data []byte) {
	t.Helper()
	if err := s.Put(t.Context(), key, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("Put(%s): %v", key, err)
	}
}

func listAll(t *testing.T, s storage.Storage, prefix string) []string {
	t.Helper()
	var keys []string
	if err := s.List(t.Context(), prefix, func(oi storage.ObjectInfo) error {
		keys = append(keys, oi.Key)
		return nil
	}); err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	return keys
}

// tempFiles returns the temporary files left anywhere under dir.
func tempFiles(t *testing.T, dir string) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), ".tmp-") {
			found = append(found, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

func TestLayoutAndModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "root")
	s := newStorage(t, dir)
	if s.Dir() != dir {
		t.Errorf("Dir() = %q, want %q", s.Dir(), dir)
	}
	put(t, s, "a/b/c", []byte("hello"))
	b, err := os.ReadFile(filepath.Join(dir, "a", "b", "c"))
	if err != nil || string(b) != "hello" {
		t.Fatalf("file for key a/b/c: %q, %v", b, err)
	}
	for p, want := range map[string]fs.FileMode{
		dir:                               fs.ModeDir | 0o700,
		filepath.Join(dir, "a"):           fs.ModeDir | 0o700,
		filepath.Join(dir, "a", "b"):      fs.ModeDir | 0o700,
		filepath.Join(dir, "a", "b", "c"): 0o600,
	} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("mode of %s = %v, want %v", p, fi.Mode(), want)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	if err := (local.Config{}).Validate(); err == nil {
		t.Error("empty Config validated")
	}
	if _, err := local.New(""); err == nil {
		t.Error("New(\"\") succeeded")
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := local.New(file); err == nil {
		t.Error("New on a regular file succeeded")
	}
}

func TestLeftoverTempFileNotListed(t *testing.T) {
	dir := t.TempDir()
	s := newStorage(t, dir)
	put(t, s, "data/ab/obj", []byte("object"))
	// What a crash between creating and renaming a temporary file leaves.
	leftover := filepath.Join(dir, "data", "ab", ".tmp-123456")
	if err := os.WriteFile(leftover, []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ".tmp-top"), []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, prefix := range []string{"", "data/", "data/ab/", "data/ab/.", "data/ab/.tmp-", ".tmp"} {
		keys := listAll(t, s, prefix)
		for _, k := range keys {
			if strings.Contains(k, ".tmp-") {
				t.Errorf("List(%q) shows temporary file %s", prefix, k)
			}
		}
	}
	if got := listAll(t, s, ""); len(got) != 1 || got[0] != "data/ab/obj" {
		t.Errorf("List(\"\") = %q, want [data/ab/obj]", got)
	}
	// Temporary names are not keys: not readable, not writable.
	ctx := t.Context()
	if _, err := s.Stat(ctx, "data/ab/.tmp-123456"); !errors.Is(err, storage.ErrInvalidKey) {
		t.Errorf("Stat of a temporary file: %v, want ErrInvalidKey", err)
	}
	if _, err := s.Get(ctx, "data/ab/.tmp-123456", 0, -1); !errors.Is(err, storage.ErrInvalidKey) {
		t.Errorf("Get of a temporary file: %v, want ErrInvalidKey", err)
	}
	if err := s.Put(ctx, "x/.tmp-1", bytes.NewReader(nil), 0); !errors.Is(err, storage.ErrInvalidKey) {
		t.Errorf("Put of a temporary name: %v, want ErrInvalidKey", err)
	}
	if err := s.Delete(ctx, "data/ab/.tmp-123456"); !errors.Is(err, storage.ErrInvalidKey) {
		t.Errorf("Delete of a temporary name: %v, want ErrInvalidKey", err)
	}
	// A directory with such a name is an ordinary directory.
	put(t, s, ".tmp-dir/obj", []byte("x"))
	if got := listAll(t, s, ".tmp-dir/"); len(got) != 1 {
		t.Errorf("List(.tmp-dir/) = %q, want [.tmp-dir/obj]", got)
	}
}

// failingReader fails after n bytes.
type failingReader struct {
	r io.ReadSeeker
	n int64
}

func (f *failingReader) Read(p []byte) (int, error) {
	pos, _ := f.r.Seek(0, io.SeekCurrent)
	if pos >= f.n {
		return 0, errors.New("disk on fire")
	}
	return f.r.Read(p[:min(int64(len(p)), f.n-pos)])
}

func (f *failingReader) Seek(off int64, whence int) (int64, error) { return f.r.Seek(off, whence) }

func TestFailedPutsLeaveNoTempFiles(t *testing.T) {
	dir := t.TempDir()
	s := newStorage(t, dir)
	data := bytes.Repeat([]byte("0123456789abcdef"), 200_000) // 3.2 MB
	put(t, s, "keep/old", []byte("old"))

	ctx := t.Context()
	fail := &failingReader{r: bytes.NewReader(data), n: 2 << 20}
	if err := s.Put(ctx, "fail/body", fail, int64(len(data))); err == nil {
		t.Error("Put with a failing body succeeded")
	}
	if err := s.Put(ctx, "keep/old", bytes.NewReader(data[:10]), 11); err == nil {
		t.Error("Put with a short body succeeded")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.Put(cctx, "fail/cancelled", bytes.NewReader(data), int64(len(data))); !errors.Is(err, context.Canceled) {
		t.Errorf("Put with a cancelled context: %v, want context.Canceled", err)
	}
	// The target's directory exists but holds a directory: rename fails.
	put(t, s, "dirkey/sub", []byte("x"))
	if err := s.Put(ctx, "dirkey", bytes.NewReader(data[:5]), 5); err == nil {
		t.Error("Put over a directory succeeded")
	}
	if got := tempFiles(t, dir); len(got) != 0 {
		t.Errorf("temporary files left after failed puts: %q", got)
	}
	if b, err := storage.ReadAll(ctx, s, "keep/old", 0, -1); err != nil || string(b) != "old" {
		t.Errorf("keep/old = %q, %v after a failed overwrite", b, err)
	}
	if b, err := storage.ReadAll(ctx, s, "dirkey/sub", 0, -1); err != nil || string(b) != "x" {
		t.Errorf("dirkey/sub = %q, %v after a failed put of dirkey", b, err)
	}
}

func TestListReadsOnlyPrefixDirectory(t *testing.T) {
	dir := t.TempDir()
	s := newStorage(t, dir)
	put(t, s, "snapshots/ws1/a", []byte("a"))
	put(t, s, "snapshots/ws10/b", []byte("b"))
	// A self-referencing link fails any walk that reaches it.
	for _, p := range []string{filepath.Join(dir, "loop"), filepath.Join(dir, "snapshots", "loop")} {
		if err := os.Symlink(filepath.Base(p), p); err != nil {
			t.Skipf("cannot create symlinks: %v", err)
		}
	}
	if got := listAll(t, s, "snapshots/ws1/"); len(got) != 1 || got[0] != "snapshots/ws1/a" {
		t.Errorf("List(snapshots/ws1/) = %q", got)
	}
	if got := listAll(t, s, "snapshots/ws"); len(got) != 2 {
		t.Errorf("List(snapshots/ws) = %q", got)
	}
	if err := s.List(t.Context(), "", func(storage.ObjectInfo) error { return nil }); err == nil {
		t.Error("List(\"\") walked past a symlink loop without error; the test is not testing anything")
	}
}

func TestSymlinkedDirectoryIsListed(t *testing.T) {
	dir := t.TempDir()
	other := t.TempDir()
	s := newStorage(t, dir)
	if err := os.Symlink(other, filepath.Join(dir, "data")); err != nil {
		t.Skipf("cannot create symlinks: %v", err)
	}
	put(t, s, "data/ab/obj", []byte("x"))
	if _, err := os.Stat(filepath.Join(other, "ab", "obj")); err != nil {
		t.Fatal(err)
	}
	if got := listAll(t, s, ""); len(got) != 1 || got[0] != "data/ab/obj" {
		t.Errorf("List(\"\") = %q, want [data/ab/obj]", got)
	}
}

func TestNoEscape(t *testing.T) {
	parent := t.TempDir()
	if err := os.WriteFile(filepath.Join(parent, "outside"), []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := newStorage(t, filepath.Join(parent, "root"))
	ctx := t.Context()
	for _, key := range []string{"../outside", "../x", "a/../../x", "/etc/passwd"} {
		if err := s.Put(ctx, key, bytes.NewReader([]byte("x")), 1); !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("Put(%q): %v, want ErrInvalidKey", key, err)
		}
		if _, err := s.Get(ctx, key, 0, -1); !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("Get(%q): %v, want ErrInvalidKey", key, err)
		}
		if err := s.Delete(ctx, key); !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("Delete(%q): %v, want ErrInvalidKey", key, err)
		}
	}
	for _, prefix := range []string{"../", "..", "../o", "a/../../", "/"} {
		if got := listAll(t, s, prefix); len(got) != 0 {
			t.Errorf("List(%q) = %q, want nothing", prefix, got)
		}
	}
	entries, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Errorf("files next to the root changed: %v", entries)
	}
}

func TestRootRemovedIsNotRecreated(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "root")
	s := newStorage(t, dir)
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(t.Context(), "a/b", bytes.NewReader([]byte("x")), 1); err == nil {
		t.Error("Put succeeded after the root was removed")
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("root was recreated: %v", err)
	}
}

func TestLongComponentIsInvalidKey(t *testing.T) {
	s := newStorage(t, t.TempDir())
	ctx := t.Context()
	key := "d/" + strings.Repeat("n", 300) // valid key, too long a file name
	if err := s.Put(ctx, key, bytes.NewReader([]byte("x")), 1); !errors.Is(err, storage.ErrInvalidKey) {
		t.Errorf("Put of a 300-byte name: %v, want ErrInvalidKey", err)
	}
	if _, err := s.Stat(ctx, key); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat of a 300-byte name: %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, key); err != nil {
		t.Errorf("Delete of a 300-byte name: %v", err)
	}
}
