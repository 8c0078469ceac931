package retry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/faults"
	"github.com/backupd/backupd/pkg/storage/mem"
	"github.com/backupd/backupd/pkg/storage/storagetest"
)

func fast() Options {
	return Options{Attempts: 30, Initial: time.Millisecond, Max: 2 * time.Millisecond}
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Storage { return New(mem.New(), fast()) })
}

// Every guarantee still holds when half of all calls fail transiently,
// some after the backend already did the work.
func TestConformanceUnderFaults(t *testing.T) {
	var seed atomic.Uint64
	storagetest.RunWithOptions(t, storagetest.Options{ListCount: 300}, func(t *testing.T) storage.Storage {
		return New(faults.New(mem.New(), faults.Options{Rate: 0.5, AfterRate: 0.5, Seed: seed.Add(1)}), fast())
	})
}

func TestPermanentErrorsAreNotRetried(t *testing.T) {
	f := faults.New(mem.New(), faults.Options{})
	r := New(f, fast())
	ctx := context.Background()
	if _, err := r.Get(ctx, "missing", 0, -1); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("err = %v", err)
	}
	if _, err := r.Stat(ctx, "missing"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("err = %v", err)
	}
	if f.Calls(faults.Get) != 1 || f.Calls(faults.Stat) != 1 {
		t.Fatalf("not-found was retried: %d gets, %d stats", f.Calls(faults.Get), f.Calls(faults.Stat))
	}
	if Retryable(storage.ErrPermission) || Retryable(context.Canceled) || Retryable(fmt.Errorf("x: %w", storage.ErrInvalidKey)) {
		t.Fatal("permanent error classified retryable")
	}
	if !Retryable(syscall.ECONNRESET) || !Retryable(storage.Transient(errors.New("503"))) {
		t.Fatal("transient error classified permanent")
	}
}

func TestGivesUpAfterAttempts(t *testing.T) {
	f := faults.New(mem.New(), faults.Options{Rate: 1})
	r := New(f, Options{Attempts: 3, Initial: time.Millisecond, Max: time.Millisecond})
	err := r.Put(context.Background(), "k", bytes.NewReader([]byte("x")), 1)
	if !errors.Is(err, faults.ErrInjected) || f.Calls(faults.Put) != 3 {
		t.Fatalf("err = %v after %d calls", err, f.Calls(faults.Put))
	}
}

func TestCancelDuringBackoff(t *testing.T) {
	f := faults.New(mem.New(), faults.Options{Rate: 1})
	r := New(f, Options{Attempts: 10, Initial: time.Hour, Max: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.Put(ctx, "k", bytes.NewReader([]byte("x")), 1) }()
	for f.Calls(faults.Put) == 0 {
		time.Sleep(time.Millisecond) // wait for the first (failing) call
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Put did not return after cancellation")
	}
}

// flaky breaks reads after a few bytes and listings after two keys, once.
type flaky struct {
	storage.Storage
	readBreaks atomic.Int64
	listBreaks atomic.Int64
}

type breakingReader struct {
	io.ReadCloser
	left int
}

func (b *breakingReader) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, syscall.ECONNRESET
	}
	if len(p) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= n
	return n, err
}

func (f *flaky) Get(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	rc, err := f.Storage.Get(ctx, key, off, n)
	if err == nil && f.readBreaks.Add(-1) >= 0 {
		return &breakingReader{ReadCloser: rc, left: 3}, nil
	}
	return rc, err
}

func (f *flaky) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	n := 0
	return f.Storage.List(ctx, prefix, func(oi storage.ObjectInfo) error {
		if n == 2 && f.listBreaks.Add(-1) >= 0 {
			return storage.Transient(errors.New("connection lost"))
		}
		n++
		return fn(oi)
	})
}

func TestReadResumesWhereItBroke(t *testing.T) {
	m := mem.New()
	data := []byte("0123456789abcdefghij")
	m.Put(context.Background(), "k", bytes.NewReader(data), int64(len(data)))
	f := &flaky{Storage: m}
	f.readBreaks.Store(3)
	r := New(f, fast())
	rc, err := r.Get(context.Background(), "k", 2, 15)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	if err != nil || string(got) != string(data[2:17]) {
		t.Fatalf("got %q, %v; want %q", got, err, data[2:17])
	}
}

func TestListRetryReportsEachKeyOnce(t *testing.T) {
	m := mem.New()
	for i := range 5 {
		m.Put(context.Background(), fmt.Sprintf("k%d", i), bytes.NewReader(nil), 0)
	}
	f := &flaky{Storage: m}
	f.listBreaks.Store(1)
	seen := map[string]int{}
	err := New(f, fast()).List(context.Background(), "", func(oi storage.ObjectInfo) error {
		seen[oi.Key]++
		return nil
	})
	if err != nil || len(seen) != 5 {
		t.Fatalf("seen %v, err %v", seen, err)
	}
	for k, n := range seen {
		if n != 1 {
			t.Fatalf("%s reported %d times", k, n)
		}
	}
	// A transient-looking error from the caller's own callback is returned
	// as is, not retried.
	calls := 0
	want := storage.Transient(errors.New("caller's"))
	err = New(m, fast()).List(context.Background(), "", func(storage.ObjectInfo) error { calls++; return want })
	if err != want || calls != 1 {
		t.Fatalf("err %v after %d calls", err, calls)
	}
}
