package sync

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/mem"
)

// signalPuts is a Storage that tells, once, when want data packs have
// been stored.
type signalPuts struct {
	storage.Storage
	want   int
	once   gosync.Once
	stored chan struct{}

	mu    gosync.Mutex
	packs int
}

func (s *signalPuts) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	err := s.Storage.Put(ctx, key, body, size)
	if err == nil && strings.Contains(key, "data/") {
		s.mu.Lock()
		s.packs++
		enough := s.packs >= s.want
		s.mu.Unlock()
		if enough {
			s.once.Do(func() { close(s.stored) })
		}
	}
	return err
}

// TestCancelledBackupIndexesItsPacks: a backup with IndexPartial cancelled
// after storing a pack writes an index object for it, writes no snapshot,
// and the next backup through the same repository stores none of those
// blobs again.
func TestCancelledBackupIndexesItsPacks(t *testing.T) {
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "a-big"), genData(7, 40<<20), 0o644, time.Unix(1e9, 0))
	writeFile(t, filepath.Join(src, "z-held"), []byte("held"), 0o644, time.Unix(1e9, 0))
	// The first two packs (rampStart, then twice that: up to 12 MiB of
	// compressed blobs, more than half of a-big's).
	root := &signalPuts{Storage: mem.New(), want: 2, stored: make(chan struct{})}
	r := openRepo(t, root)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	testHookBeforeOpen = func(path string) {
		if strings.HasSuffix(path, "z-held") {
			<-ctx.Done() // the backup cannot end before it is cancelled
		}
	}
	t.Cleanup(func() { testHookBeforeOpen = nil })
	done := make(chan error, 1)
	go func() {
		_, err := Backup(ctx, r, src, BackupOptions{Owner: "owner1", Workspace: "ws1", IndexPartial: true})
		done <- err
	}()
	<-root.stored
	cancel()
	err := <-done
	var ie *IndexedError
	if !errors.As(err, &ie) || !errors.Is(err, context.Canceled) || ie.Packs == 0 {
		t.Fatalf("cancelled backup: %v (%#v), want an IndexedError of at least one pack wrapping context.Canceled", err, ie)
	}
	var index, snaps int
	must(t, root.List(context.Background(), "", func(oi storage.ObjectInfo) error {
		if strings.Contains(oi.Key, "index/") {
			index++
		}
		if strings.Contains(oi.Key, "snapshots/") {
			snaps++
		}
		return nil
	}))
	if index == 0 || snaps != 0 {
		t.Fatalf("after the cancelled backup: %d index objects (want some), %d snapshots (want none)", index, snaps)
	}
	testHookBeforeOpen = nil
	res := doBackup(t, r, src)
	if nb := res.Snapshot.Stats.NewBytes; nb >= 30<<20 {
		t.Fatalf("next backup stored %d new bytes: the cancelled backup's packs were not reused", nb)
	}
	// A fresh load finds them in the index objects, not by adoption.
	r2 := openRepo(t, root)
	if a := r2.TakeAdopted(); len(a) != 0 {
		t.Fatalf("a fresh load adopted %d packs: some were in no index object", len(a))
	}
}
