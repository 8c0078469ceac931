package local_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

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

// lockFile opens p and takes an exclusive flock on it, as a live writer
// holds on its temporary file; closing the file releases the lock. The
// open is a file description of its own, so the lock conflicts with
// CleanUploads' also within this process.
func lockFile(t *testing.T, p string) *os.File {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		t.Fatalf("flock %s: %v", p, err)
	}
	return f
}

// writeTemp writes a temporary-looking file at p, last modified at mtime.
func writeTemp(t *testing.T, p string, mtime time.Time) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("partial upload"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

func cleanUploads(t *testing.T, s *local.Storage, prefix string, before time.Time) int {
	t.Helper()
	n, err := s.CleanUploads(t.Context(), prefix, before)
	if err != nil {
		t.Fatalf("CleanUploads(%q, %v): %v", prefix, before, err)
	}
	return n
}

func TestCleanUploadsRemovesOnlyDeadOldTempFiles(t *testing.T) {
	dir := t.TempDir()
	s := newStorage(t, dir)
	put(t, s, "data/ab/obj", []byte("object"))
	now := time.Now()
	old := now.Add(-2 * time.Hour)
	ab := filepath.Join(dir, "data", "ab")
	writeTemp(t, filepath.Join(ab, ".tmp-old"), old)
	writeTemp(t, filepath.Join(ab, ".tmp-locked"), old)
	writeTemp(t, filepath.Join(ab, ".tmp-new"), now)
	writeTemp(t, filepath.Join(dir, ".tmp-top"), old)
	writeTemp(t, filepath.Join(dir, "other", ".tmp-x"), old)
	writeTemp(t, filepath.Join(dir, "deep", "a", "b", "c", ".tmp-y"), old)
	locked := lockFile(t, filepath.Join(ab, ".tmp-locked"))
	defer locked.Close()

	// Only what prefix names: "data/" and below.
	if n := cleanUploads(t, s, "data/", now.Add(-time.Hour)); n != 1 {
		t.Errorf("CleanUploads(data/) removed %d, want 1 (.tmp-old)", n)
	}
	left := func() map[string]bool {
		m := map[string]bool{}
		for _, p := range tempFiles(t, dir) {
			rel, _ := filepath.Rel(dir, p)
			m[filepath.ToSlash(rel)] = true
		}
		return m
	}
	want := map[string]bool{"data/ab/.tmp-locked": true, "data/ab/.tmp-new": true, ".tmp-top": true,
		"other/.tmp-x": true, "deep/a/b/c/.tmp-y": true}
	if got := left(); !maps.Equal(got, want) {
		t.Errorf("after CleanUploads(data/): temporary files %v, want %v", got, want)
	}
	// A prefix that no temporary file's path starts with.
	if n := cleanUploads(t, s, "oth", now.Add(-time.Hour)); n != 1 {
		t.Errorf("CleanUploads(oth) removed %d, want 1 (other/.tmp-x)", n)
	}
	if n := cleanUploads(t, s, "data/ab/obj", now.Add(-time.Hour)); n != 0 {
		t.Errorf("CleanUploads(data/ab/obj) removed %d, want 0", n)
	}
	// Everything old and unlocked.
	if n := cleanUploads(t, s, "", now.Add(-time.Hour)); n != 2 {
		t.Errorf("CleanUploads(\"\") removed %d, want 2 (.tmp-top, deep/.../.tmp-y)", n)
	}
	want = map[string]bool{"data/ab/.tmp-locked": true, "data/ab/.tmp-new": true}
	if got := left(); !maps.Equal(got, want) {
		t.Errorf("after CleanUploads(\"\"): temporary files %v, want %v", got, want)
	}
	// However eager the caller, a locked file stays.
	if n := cleanUploads(t, s, "", now.Add(time.Hour)); n != 1 {
		t.Errorf("CleanUploads with before in the future removed %d, want 1 (.tmp-new)", n)
	}
	want = map[string]bool{"data/ab/.tmp-locked": true}
	if got := left(); !maps.Equal(got, want) {
		t.Errorf("temporary files %v, want %v", got, want)
	}
	// Its writer dies: the lock goes with its file.
	locked.Close()
	if n := cleanUploads(t, s, "", now.Add(-time.Hour)); n != 1 {
		t.Errorf("CleanUploads after the lock went removed %d, want 1", n)
	}
	if got := left(); len(got) != 0 {
		t.Errorf("temporary files left: %v", got)
	}
	if b, err := storage.ReadAll(t.Context(), s, "data/ab/obj", 0, -1); err != nil || string(b) != "object" {
		t.Errorf("data/ab/obj = %q, %v", b, err)
	}
}

func TestCleanUploadsLeavesLinksAndDirectories(t *testing.T) {
	dir := t.TempDir()
	s := newStorage(t, dir)
	put(t, s, "a/obj", []byte("object"))
	old := time.Now().Add(-2 * time.Hour)
	// A PutIfAbsent killed between link and unlink leaves its temporary
	// name as a second link to the object: removing it is harmless.
	tmp := filepath.Join(dir, "a", ".tmp-linked")
	if err := os.Link(filepath.Join(dir, "a", "obj"), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(tmp, old, old); err != nil {
		t.Fatal(err)
	}
	// Not temporary files: a directory and a symlink so named.
	if err := os.Mkdir(filepath.Join(dir, "a", ".tmp-dir"), 0o700); err != nil {
		t.Fatal(err)
	}
	writeTemp(t, filepath.Join(dir, "target"), old)
	if err := os.Symlink(filepath.Join(dir, "target"), filepath.Join(dir, "a", ".tmp-link")); err != nil {
		t.Fatal(err)
	}
	if n := cleanUploads(t, s, "", time.Now().Add(time.Hour)); n != 1 {
		t.Errorf("CleanUploads removed %d, want 1", n)
	}
	for _, p := range []string{"a/obj", "a/.tmp-dir", "a/.tmp-link", "target"} {
		if _, err := os.Lstat(filepath.Join(dir, p)); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	if _, err := os.Lstat(tmp); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s: %v, want it removed", tmp, err)
	}
	if b, err := storage.ReadAll(t.Context(), s, "a/obj", 0, -1); err != nil || string(b) != "object" {
		t.Errorf("a/obj = %q, %v", b, err)
	}
}

// blockingBody is a Put body that, at its first Read, says so on started
// and then waits for release.
type blockingBody struct {
	data    []byte
	pos     int
	started chan struct{}
	release chan struct{}
}

func (b *blockingBody) Read(p []byte) (int, error) {
	if b.pos == 0 {
		close(b.started)
		<-b.release
	}
	if b.pos >= len(b.data) {
		return 0, io.EOF
	}
	n := copy(p, b.data[b.pos:])
	b.pos += n
	return n, nil
}

func (b *blockingBody) Seek(off int64, whence int) (int64, error) {
	if off != 0 || whence != io.SeekStart {
		return 0, errors.New("blockingBody: only Seek(0, SeekStart)")
	}
	b.pos = 0
	return 0, nil
}

// TestCleanUploadsSparesLiveWriters cleans, as eagerly as it can be
// asked to, while a Put and a PutIfAbsent of this process are writing
// their temporary files.
func TestCleanUploadsSparesLiveWriters(t *testing.T) {
	dir := t.TempDir()
	s := newStorage(t, dir)
	ctx := t.Context()
	data := []byte("the object's content")
	bodies := map[string]*blockingBody{}
	errs := make(chan error, 2)
	for _, key := range []string{"live/put", "live/create"} {
		b := &blockingBody{data: data, started: make(chan struct{}), release: make(chan struct{})}
		bodies[key] = b
		go func() {
			if key == "live/put" {
				errs <- s.Put(ctx, key, b, int64(len(data)))
			} else {
				errs <- s.PutIfAbsent(ctx, key, b, int64(len(data)))
			}
		}()
		<-b.started
	}
	if got := tempFiles(t, dir); len(got) != 2 {
		t.Fatalf("temporary files of two running uploads: %q", got)
	}
	if n := cleanUploads(t, s, "", time.Now().Add(time.Hour)); n != 0 {
		t.Errorf("CleanUploads removed %d temporary files of live writers", n)
	}
	if got := tempFiles(t, dir); len(got) != 2 {
		t.Errorf("temporary files after CleanUploads: %q", got)
	}
	for _, b := range bodies {
		close(b.release)
	}
	for range bodies {
		if err := <-errs; err != nil {
			t.Errorf("upload after CleanUploads: %v", err)
		}
	}
	for key := range bodies {
		if b, err := storage.ReadAll(ctx, s, key, 0, -1); err != nil || !bytes.Equal(b, data) {
			t.Errorf("%s = %q, %v", key, b, err)
		}
	}
	if got := tempFiles(t, dir); len(got) != 0 {
		t.Errorf("temporary files after the uploads: %q", got)
	}
}

// The helper process of TestCleanUploadsAfterKill: a Put into the storage
// at $BACKUPD_TEST_PUT_DIR whose body is stdin. Once the Put has created
// its temporary file (at the first read of the body) it writes "ready" to
// file descriptor 3. It never finishes: the test kills it.
func TestHelperPutProcess(t *testing.T) {
	dir := os.Getenv("BACKUPD_TEST_PUT_DIR")
	if dir == "" {
		return // not the helper: nothing to do
	}
	s, err := local.New(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	body := &stdinBody{ready: os.NewFile(3, "ready")}
	err = s.Put(context.Background(), "data/ab/obj", body, 200<<20)
	fmt.Fprintf(os.Stderr, "helper Put returned: %v\n", err)
	os.Exit(3)
}

// stdinBody reads stdin, saying "ready" on its ready file first.
type stdinBody struct {
	ready *os.File
	said  bool
}

func (b *stdinBody) Read(p []byte) (int, error) {
	if !b.said {
		b.said = true
		if _, err := b.ready.WriteString("ready\n"); err != nil {
			return 0, err
		}
		b.ready.Close()
	}
	return os.Stdin.Read(p)
}

func (b *stdinBody) Seek(int64, int) (int64, error) { return 0, errors.New("stdin does not seek") }

// TestCleanUploadsAfterKill runs a Put in another process, killed with
// SIGKILL midway: its temporary file stays while it lives and goes with
// the next CleanUploads once it is dead.
func TestCleanUploadsAfterKill(t *testing.T) {
	dir := t.TempDir()
	s := newStorage(t, dir)
	readyR, readyW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer readyR.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperPutProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), "BACKUPD_TEST_PUT_DIR="+dir)
	cmd.ExtraFiles = []*os.File{readyW}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	readyW.Close() // the child has its own
	killed := false
	defer func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()
	// Some of the body, then nothing more: the child blocks reading.
	if _, err := stdin.Write(bytes.Repeat([]byte("x"), 1<<20)); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(readyR).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("helper did not report ready: %q, %v", line, err)
	}
	if got := tempFiles(t, dir); len(got) != 1 {
		t.Fatalf("temporary files of the running helper: %q", got)
	}
	if n := cleanUploads(t, s, "", time.Now().Add(time.Hour)); n != 0 {
		t.Errorf("CleanUploads removed %d temporary files of a live writer in another process", n)
	}
	if got := tempFiles(t, dir); len(got) != 1 {
		t.Fatalf("temporary files after cleaning while the helper runs: %q", got)
	}

	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait() // the process is gone, and with it its lock
	killed = true
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("helper: %v, want killed by SIGKILL", err)
	}
	if got := tempFiles(t, dir); len(got) != 1 {
		t.Fatalf("temporary files the killed helper left: %q, want 1", got)
	}
	if n := cleanUploads(t, s, "", time.Now().Add(time.Hour)); n != 1 {
		t.Errorf("CleanUploads after the kill removed %d, want 1", n)
	}
	if got := tempFiles(t, dir); len(got) != 0 {
		t.Errorf("temporary files left after CleanUploads: %q", got)
	}
	if _, err := s.Stat(t.Context(), "data/ab/obj"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat of the killed Put's key: %v, want ErrNotFound", err)
	}
}

func TestPutIfAbsentOverDirectory(t *testing.T) {
	dir := t.TempDir()
	s := newStorage(t, dir)
	ctx := t.Context()
	put(t, s, "dirkey/sub", []byte("x"))
	err := s.PutIfAbsent(ctx, "dirkey", bytes.NewReader([]byte("y")), 1)
	if err == nil || errors.Is(err, storage.ErrExists) {
		t.Errorf("PutIfAbsent over a directory: %v, want an error that is not ErrExists", err)
	}
	// Over a dangling symlink (no object, but in the way).
	if err := os.Symlink("nowhere", filepath.Join(dir, "dangling")); err != nil {
		t.Fatal(err)
	}
	err = s.PutIfAbsent(ctx, "dangling", bytes.NewReader([]byte("y")), 1)
	if err == nil || errors.Is(err, storage.ErrExists) {
		t.Errorf("PutIfAbsent over a dangling link: %v, want an error that is not ErrExists", err)
	}
	if got := tempFiles(t, dir); len(got) != 0 {
		t.Errorf("temporary files left: %q", got)
	}
	// Linked, not renamed: the object is a new file with one link.
	if err := s.PutIfAbsent(ctx, "new", bytes.NewReader([]byte("z")), 1); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "new"))
	if err != nil {
		t.Fatal(err)
	}
	if nlink := fi.Sys().(*syscall.Stat_t).Nlink; nlink != 1 || fi.Mode() != 0o600 {
		t.Errorf("object made by PutIfAbsent: %d links, mode %v; want 1, 0600", nlink, fi.Mode())
	}
}

// The helper process of TestPutIfMatchAcrossProcesses: once it has
// opened the storage at $BACKUPD_TEST_PIM_DIR it writes "ready" to stdout
// and waits for stdin to close; then it replaces key "lease", if at
// version $BACKUPD_TEST_PIM_VERSION, with $BACKUPD_TEST_PIM_VALUE, and
// writes "won VERSION", "lost" or the error.
func TestHelperPutIfMatchProcess(t *testing.T) {
	dir := os.Getenv("BACKUPD_TEST_PIM_DIR")
	if dir == "" {
		return // not the helper: nothing to do
	}
	s, err := local.New(dir)
	if err != nil {
		fmt.Println(err)
		os.Exit(2)
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	value := os.Getenv("BACKUPD_TEST_PIM_VALUE")
	v, err := s.PutIfMatch(context.Background(), "lease", strings.NewReader(value), int64(len(value)), os.Getenv("BACKUPD_TEST_PIM_VERSION"))
	switch {
	case err == nil:
		fmt.Println("won", v)
	case errors.Is(err, storage.ErrVersionMismatch) && !errors.Is(err, storage.ErrNotFound):
		fmt.Println("lost")
	default:
		fmt.Println(err)
	}
	os.Exit(0)
}

// TestPutIfMatchAcrossProcesses races PutIfMatch calls with one version
// in several processes, released at once: exactly one wins, round after
// round, and the object is its value at the version it reported.
func TestPutIfMatchAcrossProcesses(t *testing.T) {
	const procs, rounds = 4, 3
	dir := t.TempDir()
	s := newStorage(t, dir)
	ctx := t.Context()
	put(t, s, "lease", []byte("initial"))
	oi, err := s.Stat(ctx, "lease")
	if err != nil {
		t.Fatal(err)
	}
	version := oi.Version
	for round := range rounds {
		type helper struct {
			cmd   *exec.Cmd
			stdin io.WriteCloser
			out   *bufio.Reader
		}
		var helpers []helper
		for p := range procs {
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperPutIfMatchProcess$", "-test.count=1")
			cmd.Env = append(os.Environ(), "BACKUPD_TEST_PIM_DIR="+dir, "BACKUPD_TEST_PIM_VERSION="+version,
				fmt.Sprintf("BACKUPD_TEST_PIM_VALUE=round %d, process %d", round, p))
			cmd.Stderr = os.Stderr
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			stdin, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			h := helper{cmd, stdin, bufio.NewReader(stdout)}
			helpers = append(helpers, h)
			defer func() {
				_ = h.cmd.Process.Kill()
				_ = h.cmd.Wait()
			}()
		}
		for p, h := range helpers {
			if line, err := h.out.ReadString('\n'); err != nil || line != "ready\n" {
				t.Fatalf("helper %d: %q, %v; want ready", p, line, err)
			}
		}
		for _, h := range helpers {
			h.stdin.Close() // go
		}
		winner, won := -1, ""
		for p, h := range helpers {
			line, err := h.out.ReadString('\n')
			line = strings.TrimSuffix(line, "\n")
			switch v, ok := strings.CutPrefix(line, "won "); {
			case err != nil:
				t.Fatalf("round %d, helper %d: %v", round, p, err)
			case ok && winner >= 0:
				t.Errorf("round %d: helpers %d and %d both won", round, winner, p)
			case ok:
				winner, won = p, v
			case line != "lost":
				t.Errorf("round %d, helper %d: %s", round, p, line)
			}
			if err := h.cmd.Wait(); err != nil {
				t.Errorf("round %d, helper %d: %v", round, p, err)
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: no helper won", round)
		}
		b, oi, err := storage.ReadVersioned(ctx, s, "lease", 100)
		if want := fmt.Sprintf("round %d, process %d", round, winner); err != nil || string(b) != want || oi.Version != won {
			t.Fatalf("round %d: lease = %q at version %q, %v; want %q at the winner's version %q", round, b, oi.Version, err, want, won)
		}
		version = won
	}
}
