package local

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/backupd/backupd/pkg/storage"
)

// holdLock takes the lock of the storage at dir as another process would:
// through an open file description of its own.
func holdLock(t *testing.T, dir string, how int) *os.File {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := flock(f, how); err != nil {
		t.Fatal(err)
	}
	return f
}

func content(t *testing.T, s *Storage, key string) string {
	t.Helper()
	b, err := storage.ReadAll(t.Context(), s, key, 0, -1)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return string(b)
}

func noTempFiles(t *testing.T, dir string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), tempPrefix) {
			t.Errorf("temporary file left: %s", p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Put, Delete and PutIfMatch wait while a PutIfMatch (of any process)
// holds the lock, and give up when their context is cancelled, changing
// nothing; a Put or Delete in progress (the lock shared) holds up a
// PutIfMatch, but no other Put or Delete.
func TestWritersWaitForTheLock(t *testing.T) {
	dir := t.TempDir()
	s, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := s.Put(ctx, "k", strings.NewReader("old"), 3); err != nil {
		t.Fatal(err)
	}
	waiting := make(chan struct{}, 1)
	s.lockWait = func() { waiting <- struct{}{} }
	done := make(chan error, 1)

	held := holdLock(t, dir, unix.LOCK_EX)
	for _, op := range []struct {
		name string
		call func(context.Context) error
	}{
		{"Put", func(ctx context.Context) error { return s.Put(ctx, "k", strings.NewReader("new"), 3) }},
		{"Put of a new key", func(ctx context.Context) error { return s.Put(ctx, "other", strings.NewReader("new"), 3) }},
		{"Delete", func(ctx context.Context) error { return s.Delete(ctx, "k") }},
	} {
		cctx, cancel := context.WithCancel(ctx)
		go func() { done <- op.call(cctx) }()
		<-waiting
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("%s waiting for the lock, cancelled: %v", op.name, err)
		}
		if got := content(t, s, "k"); got != "old" {
			t.Errorf("after a cancelled %s: k = %q", op.name, got)
		}
	}
	if _, err := s.Stat(ctx, "other"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("a Put cancelled at the lock stored its object: %v", err)
	}
	noTempFiles(t, dir)

	oi, err := s.Stat(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		_, err := s.PutIfMatch(ctx, "k", strings.NewReader("newer"), 5, oi.Version)
		done <- err
	}()
	<-waiting
	held.Close() // the holder is done: the PutIfMatch goes ahead
	if err := <-done; err != nil {
		t.Fatalf("PutIfMatch once the lock is free: %v", err)
	}
	if got := content(t, s, "k"); got != "newer" {
		t.Errorf("k = %q after the PutIfMatch", got)
	}

	// Shared: Puts and Deletes go on, a PutIfMatch waits.
	held = holdLock(t, dir, unix.LOCK_SH)
	defer held.Close()
	if err := s.Put(ctx, "k", strings.NewReader("shared"), 6); err != nil {
		t.Fatalf("Put while another Put holds the lock: %v", err)
	}
	if err := s.Delete(ctx, "other"); err != nil {
		t.Fatalf("Delete while another Put holds the lock: %v", err)
	}
	select {
	case <-waiting:
		t.Fatal("a Put or Delete waited for another one")
	default:
	}
	oi, err = s.Stat(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		_, err := s.PutIfMatch(ctx, "k", strings.NewReader("last"), 4, oi.Version)
		done <- err
	}()
	<-waiting
	held.Close()
	if err := <-done; err != nil {
		t.Fatalf("PutIfMatch once the shared lock is free: %v", err)
	}
	if got := content(t, s, "k"); got != "last" {
		t.Errorf("k = %q after the PutIfMatch", got)
	}
}

// The lock file is at the root only, is no object, and CleanUploads
// leaves it; the same name deeper down is an ordinary key.
func TestLockFileIsNoObject(t *testing.T) {
	dir := t.TempDir()
	s, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := s.Put(ctx, "sub/"+lockName, strings.NewReader("a key"), 5); err != nil {
		t.Fatalf("Put(sub/%s): %v", lockName, err)
	}
	if _, err := os.Stat(filepath.Join(dir, lockName)); err != nil {
		t.Fatalf("no lock file after a Put: %v", err)
	}
	var keys []string
	for _, prefix := range []string{"", ".", ".backupd", lockName} {
		if err := s.List(ctx, prefix, func(oi storage.ObjectInfo) error {
			keys = append(keys, oi.Key)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if len(keys) != 1 || keys[0] != "sub/"+lockName {
		t.Errorf("listed %q; want only sub/%s", keys, lockName)
	}
	body := func() *bytes.Reader { return bytes.NewReader([]byte("x")) }
	for name, err := range map[string]error{
		"Put":         s.Put(ctx, lockName, body(), 1),
		"PutIfAbsent": s.PutIfAbsent(ctx, lockName, body(), 1),
		"Delete":      s.Delete(ctx, lockName),
		"Stat":        func() error { _, err := s.Stat(ctx, lockName); return err }(),
		"Get":         func() error { _, err := s.Get(ctx, lockName, 0, -1); return err }(),
		"GetWithInfo": func() error { _, _, err := s.GetWithInfo(ctx, lockName); return err }(),
		"PutIfMatch":  func() error { _, err := s.PutIfMatch(ctx, lockName, body(), 1, "1.2.3"); return err }(),
	} {
		if !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("%s(%s): %v, want ErrInvalidKey", name, lockName, err)
		}
	}
	if n, err := s.CleanUploads(ctx, "", time.Now().Add(time.Hour)); n != 0 || err != nil {
		t.Errorf("CleanUploads = %d, %v; want 0, nil", n, err)
	}
	if _, err := os.Stat(filepath.Join(dir, lockName)); err != nil {
		t.Errorf("lock file after CleanUploads: %v", err)
	}
}
