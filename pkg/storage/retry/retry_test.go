package retry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
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
// some after the backend already did the work; but a PutIfAbsent whose
// reply was lost may see its own object on the next try (LostReplies,
// and TestPutIfAbsentLostReply).
func TestConformanceUnderFaults(t *testing.T) {
	var seed atomic.Uint64
	storagetest.RunWithOptions(t, storagetest.Options{ListCount: 300, LostReplies: true}, func(t *testing.T) storage.Storage {
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

// A PutIfAbsent whose first try stored the object but lost the reply is
// retried, and the retry finds the object: ErrExists, though the object
// is the caller's own (the ambiguity storage.Storage documents).
func TestPutIfAbsentLostReply(t *testing.T) {
	m := mem.New()
	f := faults.New(m, faults.Options{Rate: 1, AfterRate: 1, Ops: []faults.Op{faults.PutIfAbsent}})
	r := New(f, fast())
	ctx := context.Background()
	err := r.PutIfAbsent(ctx, "lock", strings.NewReader("mine"), 4)
	if !errors.Is(err, storage.ErrExists) {
		t.Fatalf("PutIfAbsent after a lost reply: %v, want ErrExists", err)
	}
	if f.Calls(faults.PutIfAbsent) != 2 {
		t.Errorf("%d tries, want 2: the lost reply, then ErrExists (not retried)", f.Calls(faults.PutIfAbsent))
	}
	if b, err := storage.ReadAll(ctx, m, "lock", 0, -1); err != nil || string(b) != "mine" {
		t.Errorf("lock = %q, %v; want the caller's own bytes", b, err)
	}
	if Retryable(fmt.Errorf("x: %w", storage.ErrExists)) {
		t.Error("ErrExists classified retryable")
	}
}

// CleanUploads is retried on transient failures and reports what every
// try removed.
func TestCleanUploadsRetried(t *testing.T) {
	inner := &cleaning{removals: []int{2, 3}, errs: []error{storage.Transient(errors.New("503")), nil}}
	r := New(inner, fast())
	n, err := r.CleanUploads(context.Background(), "p/", time.Now())
	if err != nil || n != 5 || inner.calls != 2 {
		t.Errorf("CleanUploads = %d, %v after %d tries; want 5, nil after 2", n, err, inner.calls)
	}
	inner = &cleaning{removals: []int{1}, errs: []error{storage.ErrPermission}}
	r = New(inner, fast())
	if n, err := r.CleanUploads(context.Background(), "p/", time.Now()); !errors.Is(err, storage.ErrPermission) || n != 1 || inner.calls != 1 {
		t.Errorf("CleanUploads failing permanently = %d, %v after %d tries; want 1, ErrPermission after 1", n, err, inner.calls)
	}
}

// cleaning is a storage whose CleanUploads removes and fails as told, a
// try at a time.
type cleaning struct {
	storage.Storage
	removals []int
	errs     []error
	calls    int
}

func (c *cleaning) CleanUploads(context.Context, string, time.Time) (int, error) {
	i := c.calls
	c.calls++
	return c.removals[i], c.errs[i]
}

// A PutIfMatch whose first try stored the object but lost the reply is
// retried, and the retry finds the object at another version (its own):
// ErrVersionMismatch, which is not retried further. ReadVersioned tells
// the caller that the object is its own.
func TestPutIfMatchLostReply(t *testing.T) {
	m := mem.New()
	ctx := context.Background()
	if err := m.Put(ctx, "lease", strings.NewReader("old"), 3); err != nil {
		t.Fatal(err)
	}
	oi, err := m.Stat(ctx, "lease")
	if err != nil {
		t.Fatal(err)
	}
	f := faults.New(m, faults.Options{Rate: 1, AfterRate: 1, Ops: []faults.Op{faults.PutIfMatch}})
	r := New(f, fast())
	_, err = r.PutIfMatch(ctx, "lease", strings.NewReader("mine"), 4, oi.Version)
	if !errors.Is(err, storage.ErrVersionMismatch) {
		t.Fatalf("PutIfMatch after a lost reply: %v, want ErrVersionMismatch", err)
	}
	if f.Calls(faults.PutIfMatch) != 2 {
		t.Errorf("%d tries, want 2: the lost reply, then ErrVersionMismatch (not retried)", f.Calls(faults.PutIfMatch))
	}
	if b, _, err := storage.ReadVersioned(ctx, r, "lease", 100); err != nil || string(b) != "mine" {
		t.Errorf("lease = %q, %v; want the caller's own bytes", b, err)
	}
	if Retryable(fmt.Errorf("x: %w", storage.ErrVersionMismatch)) {
		t.Error("ErrVersionMismatch classified retryable")
	}
}

// GetWithInfo is retried until it opens; its reader is the wrapped
// storage's, not one that resumes (which could mix two versions' bytes).
func TestGetWithInfoRetriedNotResumed(t *testing.T) {
	m := mem.New()
	ctx := context.Background()
	if err := m.Put(ctx, "state", strings.NewReader("state"), 5); err != nil {
		t.Fatal(err)
	}
	f := faults.New(m, faults.Options{Rate: 1, Ops: []faults.Op{faults.GetWithInfo}})
	r := New(f, Options{Attempts: 3, Initial: time.Millisecond, Max: time.Millisecond})
	if _, _, err := r.GetWithInfo(ctx, "state"); !errors.Is(err, faults.ErrInjected) || f.Calls(faults.GetWithInfo) != 3 {
		t.Fatalf("GetWithInfo failing every time: %v after %d tries; want the fault after 3", err, f.Calls(faults.GetWithInfo))
	}
	f.SetOptions(faults.Options{})
	rc, oi, err := r.GetWithInfo(ctx, "state")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, resumes := rc.(*resumingReader); resumes || oi.Version == "" || oi.Size != 5 {
		t.Errorf("GetWithInfo = %T, %+v; want the wrapped reader and the object's info", rc, oi)
	}
}
