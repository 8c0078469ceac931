package prefix_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/local"
	"github.com/backupd/backupd/pkg/storage/mem"
	"github.com/backupd/backupd/pkg/storage/prefix"
	"github.com/backupd/backupd/pkg/storage/storagetest"
)

func TestConformance(t *testing.T) {
	// Keys grow by the prefix, so the longest usable key shrinks by it.
	opts := storagetest.Options{MaxKeyLength: 1024 - len("owner1/")}
	storagetest.RunWithOptions(t, opts, func(t *testing.T) storage.Storage { return mustNew(t, mem.New(), "owner1") })
}

func TestConformanceNested(t *testing.T) {
	opts := storagetest.Options{ListCount: 300, LargeSize: 1 << 20, MaxKeyLength: 1024 - len("org/owner1/")}
	storagetest.RunWithOptions(t, opts, func(t *testing.T) storage.Storage { return mustNew(t, mem.New(), "org/owner1") })
}

func mustNew(t *testing.T, s storage.Storage, p string) storage.Storage {
	t.Helper()
	ps, err := prefix.New(s, p)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

func put(t *testing.T, s storage.Storage, key, data string) {
	t.Helper()
	if err := s.Put(t.Context(), key, bytes.NewReader([]byte(data)), int64(len(data))); err != nil {
		t.Fatalf("Put(%s): %v", key, err)
	}
}

func read(t *testing.T, s storage.Storage, key string) (string, error) {
	t.Helper()
	b, err := storage.ReadAll(t.Context(), s, key, 0, -1)
	return string(b), err
}

func keys(t *testing.T, s storage.Storage, p string) map[string]bool {
	t.Helper()
	got := map[string]bool{}
	if err := s.List(t.Context(), p, func(oi storage.ObjectInfo) error {
		got[oi.Key] = true
		return nil
	}); err != nil {
		t.Fatalf("List(%q): %v", p, err)
	}
	return got
}

func TestIsolation(t *testing.T) {
	root := mem.New()
	o1 := mustNew(t, root, "o1")
	o2 := mustNew(t, root, "o2")
	o := mustNew(t, root, "o") // a string prefix of "o1", not a parent
	put(t, o1, "data/x", "one")
	put(t, o2, "data/x", "two")
	put(t, o1, "config", "c1")

	if got, err := read(t, o1, "data/x"); got != "one" || err != nil {
		t.Errorf("o1 data/x = %q, %v", got, err)
	}
	if got, err := read(t, o2, "data/x"); got != "two" || err != nil {
		t.Errorf("o2 data/x = %q, %v", got, err)
	}
	if _, err := read(t, o2, "config"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("o2 sees o1's config: %v", err)
	}
	if got := keys(t, o1, ""); len(got) != 2 || !got["data/x"] || !got["config"] {
		t.Errorf("o1 lists %v", got)
	}
	if got := keys(t, o2, ""); len(got) != 1 || !got["data/x"] {
		t.Errorf("o2 lists %v", got)
	}
	if got := keys(t, o, ""); len(got) != 0 {
		t.Errorf("prefix o lists objects of o1 or o2: %v", got)
	}
	if got := keys(t, root, ""); len(got) != 3 || !got["o1/data/x"] || !got["o2/data/x"] || !got["o1/config"] {
		t.Errorf("root lists %v", got)
	}
	oi, err := o1.Stat(t.Context(), "config")
	if err != nil || oi.Key != "config" || oi.Size != 2 {
		t.Errorf("o1 Stat(config) = %+v, %v", oi, err)
	}

	if err := o2.Delete(t.Context(), "data/x"); err != nil {
		t.Fatal(err)
	}
	if got, err := read(t, o1, "data/x"); got != "one" || err != nil {
		t.Errorf("deleting o2's data/x changed o1's: %q, %v", got, err)
	}
	if err := o1.Close(); err != nil {
		t.Fatal(err)
	}
	if got, err := read(t, o1, "data/x"); got != "one" || err != nil {
		t.Errorf("root unusable after closing a prefix view: %q, %v", got, err)
	}
}

func TestInvalidPrefix(t *testing.T) {
	for _, p := range []string{"", "/", "/o1", "o1/", "a//b", "..", "../o1", "o1/..", "o\\1"} {
		if s, err := prefix.New(mem.New(), p); !errors.Is(err, storage.ErrInvalidKey) || s != nil {
			t.Errorf("New(%q) = %v, %v; want nil, ErrInvalidKey", p, s, err)
		}
	}
}

// leaky is a broken storage whose List ignores the prefix.
type leaky struct{ storage.Storage }

func (l leaky) List(ctx context.Context, _ string, fn func(storage.ObjectInfo) error) error {
	return l.Storage.List(ctx, "", fn)
}

func TestListNeverLeaksOtherPrefixes(t *testing.T) {
	root := mem.New()
	put(t, root, "o2/secret", "x")
	o1 := mustNew(t, leaky{root}, "o1")
	err := o1.List(t.Context(), "", func(oi storage.ObjectInfo) error {
		t.Errorf("o1 listed %q", oi.Key)
		return nil
	})
	if err == nil {
		t.Error("List over a leaking storage returned no error")
	}
}

func TestKeyTooLongUnderPrefix(t *testing.T) {
	s := mustNew(t, mem.New(), "owner1")
	key := strings.Repeat("k", 1020) // valid alone, too long with "owner1/"
	if err := s.Put(t.Context(), key, bytes.NewReader(nil), 0); !errors.Is(err, storage.ErrInvalidKey) {
		t.Errorf("Put of a key too long under the prefix: %v, want ErrInvalidKey", err)
	}
}

// A view's create-only writes and cleaning stay inside its prefix. Over a
// local storage, a dead upload leaves a temporary file that only the view
// of its prefix (or the whole storage) removes.
func TestPutIfAbsentAndCleanUploadsStayInside(t *testing.T) {
	dir := t.TempDir()
	root, err := local.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	a := mustNew(t, root, "owner1")
	b := mustNew(t, root, "owner10")
	ctx := t.Context()
	if err := a.PutIfAbsent(ctx, "config", strings.NewReader("a"), 1); err != nil {
		t.Fatal(err)
	}
	if err := b.PutIfAbsent(ctx, "config", strings.NewReader("b"), 1); err != nil {
		t.Errorf("PutIfAbsent(config) under another prefix: %v", err)
	}
	if err := a.PutIfAbsent(ctx, "config", strings.NewReader("again"), 5); !errors.Is(err, storage.ErrExists) {
		t.Errorf("second PutIfAbsent(config): %v, want ErrExists", err)
	}
	if got, _ := read(t, root, "owner1/config"); got != "a" {
		t.Errorf("owner1/config = %q, want a", got)
	}

	old := time.Now().Add(-time.Hour)
	for _, p := range []string{"owner1/data/.tmp-1", "owner1/.tmp-2", "owner10/data/.tmp-3", ".tmp-4"} {
		f := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(f), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(f, old, old); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := a.CleanUploads(ctx, "data/", time.Now()); n != 1 || err != nil {
		t.Errorf("CleanUploads(data/) under owner1 = %d, %v; want 1", n, err)
	}
	if n, err := a.CleanUploads(ctx, "", time.Now()); n != 1 || err != nil {
		t.Errorf("CleanUploads(\"\") under owner1 = %d, %v; want 1", n, err)
	}
	for _, p := range []string{"owner10/data/.tmp-3", ".tmp-4"} {
		if _, err := os.Stat(filepath.Join(dir, filepath.FromSlash(p))); err != nil {
			t.Errorf("%s, outside owner1: %v", p, err)
		}
	}
	if n, err := b.CleanUploads(ctx, "", time.Now()); n != 1 || err != nil {
		t.Errorf("CleanUploads under owner10 = %d, %v; want 1", n, err)
	}
	if n, err := root.CleanUploads(ctx, "", time.Now()); n != 1 || err != nil {
		t.Errorf("CleanUploads of the whole storage = %d, %v; want 1 (.tmp-4)", n, err)
	}
}

// A view's conditional writes and versioned reads stay inside its prefix,
// and report keys without it.
func TestPutIfMatchAndGetWithInfoStayInside(t *testing.T) {
	root := mem.New()
	a := mustNew(t, root, "owner1")
	b := mustNew(t, root, "owner10")
	ctx := t.Context()
	for _, s := range []storage.Storage{a, b} {
		if err := s.Put(ctx, "lease", strings.NewReader("first"), 5); err != nil {
			t.Fatal(err)
		}
	}
	data, oi, err := storage.ReadVersioned(ctx, a, "lease", 100)
	if err != nil || string(data) != "first" || oi.Key != "lease" {
		t.Fatalf("ReadVersioned(lease) under owner1 = %q, %+v, %v", data, oi, err)
	}
	if ri, err := root.Stat(ctx, "owner1/lease"); err != nil || ri.Version != oi.Version {
		t.Errorf("version under owner1 %q, of owner1/lease %q (%v)", oi.Version, ri.Version, err)
	}
	bi, err := b.Stat(ctx, "lease")
	if err != nil {
		t.Fatal(err)
	}
	// owner10's version is not owner1's, and the other way round.
	if _, err := a.PutIfMatch(ctx, "lease", strings.NewReader("x"), 1, bi.Version); !errors.Is(err, storage.ErrVersionMismatch) {
		t.Errorf("PutIfMatch under owner1 with owner10's version: %v", err)
	}
	if _, err := a.PutIfMatch(ctx, "lease", strings.NewReader("second"), 6, oi.Version); err != nil {
		t.Errorf("PutIfMatch under owner1: %v", err)
	}
	if got, _ := read(t, root, "owner1/lease"); got != "second" {
		t.Errorf("owner1/lease = %q, want second", got)
	}
	if got, _ := read(t, root, "owner10/lease"); got != "first" {
		t.Errorf("owner10/lease = %q, want first", got)
	}
	if _, err := a.PutIfMatch(ctx, "missing", strings.NewReader("x"), 1, oi.Version); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("PutIfMatch(missing) under owner1: %v, want ErrNotFound", err)
	}
	if _, _, err := a.GetWithInfo(ctx, "../owner10/lease"); !errors.Is(err, storage.ErrInvalidKey) {
		t.Errorf("GetWithInfo out of the prefix: %v, want ErrInvalidKey", err)
	}
}
