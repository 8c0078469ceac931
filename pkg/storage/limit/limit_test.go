package limit

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/mem"
	"github.com/backupd/backupd/pkg/storage/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Storage {
		return New(mem.New(), Options{Uploads: 2, Downloads: 2, Metadata: 2})
	})
}

// gate counts concurrent Puts and blocks them until released.
type gate struct {
	storage.Storage
	cur, peak atomic.Int64
	release   chan struct{}
}

func (g *gate) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	n := g.cur.Add(1)
	for {
		p := g.peak.Load()
		if n <= p || g.peak.CompareAndSwap(p, n) {
			break
		}
	}
	<-g.release
	g.cur.Add(-1)
	return g.Storage.Put(ctx, key, body, size)
}

func TestUploadsAreBounded(t *testing.T) {
	g := &gate{Storage: mem.New(), release: make(chan struct{})}
	l := New(g, Options{Uploads: 3, Downloads: 1, Metadata: 1})
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.Put(context.Background(), string(rune('a'+i)), bytes.NewReader(nil), 0)
		}()
	}
	// The limit is reached (polling the state, bounded)...
	deadline := time.Now().Add(10 * time.Second)
	for g.cur.Load() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d uploads started", g.cur.Load())
		}
		time.Sleep(time.Millisecond)
	}
	// ...and never exceeded while the Puts drain one by one.
	for range 10 {
		g.release <- struct{}{}
	}
	wg.Wait()
	if p := g.peak.Load(); p != 3 {
		t.Fatalf("peak concurrent uploads %d, want 3", p)
	}
}

func TestDownloadSlotHeldUntilClose(t *testing.T) {
	m := mem.New()
	m.Put(context.Background(), "k", bytes.NewReader([]byte("x")), 1)
	l := New(m, Options{Uploads: 1, Downloads: 1, Metadata: 1})
	rc, err := l.Get(context.Background(), "k", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := l.Get(ctx, "k", 0, -1); err == nil {
		t.Fatal("second download got a slot while the first reader is open")
	}
	rc.Close()
	rc.Close() // idempotent
	rc2, err := l.Get(context.Background(), "k", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	rc2.Close()
}

// blocking holds its Put and Stat calls until released, saying on entered
// when one has begun.
type blocking struct {
	storage.Storage
	entered chan struct{}
	release chan struct{}
}

func (b *blocking) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	b.entered <- struct{}{}
	<-b.release
	return b.Storage.Put(ctx, key, body, size)
}

func (b *blocking) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	b.entered <- struct{}{}
	<-b.release
	return b.Storage.Stat(ctx, key)
}

// PutIfAbsent needs an upload slot, CleanUploads a metadata slot.
func TestPutIfAbsentAndCleanUploadsSlots(t *testing.T) {
	b := &blocking{Storage: mem.New(), entered: make(chan struct{}), release: make(chan struct{})}
	l := New(b, Options{Uploads: 1, Downloads: 1, Metadata: 1})
	ctx := context.Background()
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	done := make(chan error)

	go func() { done <- l.Put(ctx, "a", bytes.NewReader(nil), 0) }()
	<-b.entered // the upload slot is taken
	if err := l.PutIfAbsent(cancelled, "b", bytes.NewReader(nil), 0); !errors.Is(err, context.Canceled) {
		t.Errorf("PutIfAbsent while the upload slot is taken: %v, want to wait (and give up when cancelled)", err)
	}
	if n, err := l.CleanUploads(ctx, "", time.Now()); n != 0 || err != nil {
		t.Errorf("CleanUploads while uploads are full: %d, %v", n, err)
	}
	b.release <- struct{}{}
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	go func() { _, err := l.Stat(ctx, "a"); done <- err }()
	<-b.entered // the metadata slot is taken
	if _, err := l.CleanUploads(cancelled, "", time.Now()); !errors.Is(err, context.Canceled) {
		t.Errorf("CleanUploads while the metadata slot is taken: %v, want to wait", err)
	}
	if err := l.PutIfAbsent(ctx, "b", bytes.NewReader([]byte("b")), 1); err != nil {
		t.Errorf("PutIfAbsent while metadata is full: %v", err)
	}
	b.release <- struct{}{}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// PutIfMatch needs an upload slot; GetWithInfo a download slot, held
// until its reader is closed.
func TestPutIfMatchAndGetWithInfoSlots(t *testing.T) {
	m := mem.New()
	b := &blocking{Storage: m, entered: make(chan struct{}), release: make(chan struct{})}
	l := New(b, Options{Uploads: 1, Downloads: 1, Metadata: 1})
	ctx := context.Background()
	if err := m.Put(ctx, "b", bytes.NewReader([]byte("b")), 1); err != nil {
		t.Fatal(err)
	}
	oi, err := m.Stat(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	done := make(chan error)

	go func() { done <- l.Put(ctx, "a", bytes.NewReader(nil), 0) }()
	<-b.entered // the upload slot is taken
	if _, err := l.PutIfMatch(cancelled, "b", bytes.NewReader(nil), 0, oi.Version); !errors.Is(err, context.Canceled) {
		t.Errorf("PutIfMatch while the upload slot is taken: %v, want to wait (and give up when cancelled)", err)
	}
	rc, _, err := l.GetWithInfo(ctx, "b")
	if err != nil {
		t.Fatalf("GetWithInfo while uploads are full: %v", err)
	}
	b.release <- struct{}{}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := l.PutIfMatch(ctx, "b", bytes.NewReader([]byte("c")), 1, oi.Version); err != nil {
		t.Errorf("PutIfMatch with the upload slot free: %v", err)
	}
	// The download slot is held until the reader is closed.
	if _, _, err := l.GetWithInfo(cancelled, "b"); !errors.Is(err, context.Canceled) {
		t.Errorf("GetWithInfo while a reader holds the download slot: %v, want to wait", err)
	}
	rc.Close()
	rc, _, err = l.GetWithInfo(ctx, "b")
	if err != nil {
		t.Fatalf("GetWithInfo after the reader was closed: %v", err)
	}
	rc.Close()
}
