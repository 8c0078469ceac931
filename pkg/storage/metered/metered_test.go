package metered

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/faults"
	"github.com/backupd/backupd/pkg/storage/mem"
	"github.com/backupd/backupd/pkg/storage/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Storage {
		return New(mem.New(), ObserverFunc(func(string, error, int64, time.Duration) {}))
	})
}

type call struct {
	op    string
	err   error
	bytes int64
}

// recorder is an Observer that keeps every call.
type recorder struct {
	mu    sync.Mutex
	calls []call
}

func (r *recorder) ObserveCall(op string, err error, bytes int64, d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if d < 0 {
		panic("negative duration")
	}
	r.calls = append(r.calls, call{op, err, bytes})
}

// take returns the calls recorded since the last take.
func (r *recorder) take() []call {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.calls
	r.calls = nil
	return c
}

// expect checks that exactly one call was recorded since the last take,
// of op, moving bytes, and failing with an error that is wantErr (nil:
// success).
func (r *recorder) expect(t *testing.T, op string, bytes int64, wantErr error) {
	t.Helper()
	calls := r.take()
	if len(calls) != 1 {
		t.Fatalf("recorded %v, want one %s call", calls, op)
	}
	c := calls[0]
	errOK := (wantErr == nil && c.err == nil) || (wantErr != nil && errors.Is(c.err, wantErr))
	if c.op != op || c.bytes != bytes || !errOK {
		t.Fatalf("recorded %+v, want op %s, %d bytes, error %v", c, op, bytes, wantErr)
	}
}

func TestReportsEachCall(t *testing.T) {
	ctx := context.Background()
	rec := &recorder{}
	m := New(mem.New(), rec)
	data := []byte("0123456789")

	if err := m.Put(ctx, "k", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	rec.expect(t, OpPut, 10, nil)

	if _, err := m.Stat(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	rec.expect(t, OpStat, 0, nil)
	if _, err := m.Stat(ctx, "missing"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("stat missing: %v", err)
	}
	rec.expect(t, OpStat, 0, storage.ErrNotFound)

	// A Get is reported when its reader is closed, once, with the bytes
	// the caller read.
	rc, err := m.Get(ctx, "k", 1, -1)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(rc); err != nil || string(got) != "123456789" {
		t.Fatalf("read %q, %v", got, err)
	}
	if c := rec.take(); len(c) != 0 {
		t.Fatalf("Get reported before its reader was closed: %v", c)
	}
	rc.Close()
	rec.expect(t, OpGet, 9, nil)
	rc.Close()
	if c := rec.take(); len(c) != 0 {
		t.Fatalf("second Close reported again: %v", c)
	}

	// Read partially, then closed.
	rc, err = m.Get(ctx, "k", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(rc, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	rc.Close()
	rec.expect(t, OpGet, 4, nil)

	if _, err := m.Get(ctx, "missing", 0, -1); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("get missing: %v", err)
	}
	rec.expect(t, OpGet, 0, storage.ErrNotFound)

	n := 0
	if err := m.List(ctx, "", func(storage.ObjectInfo) error { n++; return nil }); err != nil || n != 1 {
		t.Fatalf("list: %d objects, %v", n, err)
	}
	rec.expect(t, OpList, 0, nil)

	// A listing stopped by the caller's fn returns fn's error but is not
	// the storage's failure.
	stop := errors.New("found it")
	if err := m.List(ctx, "", func(storage.ObjectInfo) error { return stop }); err != stop {
		t.Fatalf("list stopped by fn: %v", err)
	}
	rec.expect(t, OpList, 0, nil)

	if err := m.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	rec.expect(t, OpDelete, 0, nil)
}

func TestReportsFailures(t *testing.T) {
	ctx := context.Background()
	rec := &recorder{}
	f := faults.New(mem.New(), faults.Options{})
	m := New(f, rec)
	data := []byte("0123456789")

	// Failing calls are reported with their error; a failed Put with no
	// bytes.
	f.SetOptions(faults.Options{Rate: 1})
	if err := m.Put(ctx, "k", bytes.NewReader(data), int64(len(data))); !errors.Is(err, faults.ErrInjected) {
		t.Fatalf("put: %v", err)
	}
	rec.expect(t, OpPut, 0, faults.ErrInjected)
	if _, err := m.Get(ctx, "k", 0, -1); !errors.Is(err, faults.ErrInjected) {
		t.Fatalf("get: %v", err)
	}
	rec.expect(t, OpGet, 0, faults.ErrInjected)
	if err := m.List(ctx, "", func(storage.ObjectInfo) error { return nil }); !errors.Is(err, faults.ErrInjected) {
		t.Fatalf("list: %v", err)
	}
	rec.expect(t, OpList, 0, faults.ErrInjected)
	if err := m.Delete(ctx, "k"); !errors.Is(err, faults.ErrInjected) {
		t.Fatalf("delete: %v", err)
	}
	rec.expect(t, OpDelete, 0, faults.ErrInjected)
	f.SetOptions(faults.Options{})

	// A Read that fails midway makes the Get fail, with the bytes read
	// before it.
	if err := m.Put(ctx, "k", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	rec.take()
	gctx, cancel := context.WithCancel(ctx)
	rc, err := m.Get(gctx, "k", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(rc, make([]byte, 3)); err != nil {
		t.Fatal(err)
	}
	cancel() // mem's reader fails from now on
	if _, err := rc.Read(make([]byte, 3)); !errors.Is(err, context.Canceled) {
		t.Fatalf("read after cancel: %v", err)
	}
	rc.Close()
	rec.expect(t, OpGet, 3, context.Canceled)
}

func TestNilObserverPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("New with a nil Observer did not panic")
		}
	}()
	New(mem.New(), nil)
}

// PutIfAbsent and CleanUploads are operations of their own: a create-only
// write must not pass for a plain put in the metrics.
func TestReportsCreateOnlyAndCleaning(t *testing.T) {
	ctx := context.Background()
	rec := &recorder{}
	m := New(mem.New(), rec)
	if err := m.PutIfAbsent(ctx, "config", strings.NewReader("cfg"), 3); err != nil {
		t.Fatal(err)
	}
	rec.expect(t, OpPutIfAbsent, 3, nil)
	if err := m.PutIfAbsent(ctx, "config", strings.NewReader("other"), 5); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("second PutIfAbsent: %v", err)
	}
	rec.expect(t, OpPutIfAbsent, 0, storage.ErrExists)
	if n, err := m.CleanUploads(ctx, "", time.Now()); n != 0 || err != nil {
		t.Fatalf("CleanUploads = %d, %v", n, err)
	}
	rec.expect(t, OpCleanUploads, 0, nil)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := m.CleanUploads(cctx, "", time.Now()); !errors.Is(err, context.Canceled) {
		t.Fatalf("CleanUploads cancelled: %v", err)
	}
	rec.expect(t, OpCleanUploads, 0, context.Canceled)
	if OpPutIfAbsent != "put_if_absent" || OpCleanUploads != "clean_uploads" {
		t.Errorf("operation names %q, %q; the daemon's metrics label them so", OpPutIfAbsent, OpCleanUploads)
	}
}

// PutIfMatch and GetWithInfo are operations of their own too: the
// traffic of leases and state objects shows apart from packs'.
func TestReportsConditionalAndVersioned(t *testing.T) {
	ctx := context.Background()
	rec := &recorder{}
	inner := mem.New()
	m := New(inner, rec)
	if err := inner.Put(ctx, "lease", strings.NewReader("v1"), 2); err != nil {
		t.Fatal(err)
	}
	data, oi, err := storage.ReadVersioned(ctx, m, "lease", 10)
	if err != nil || string(data) != "v1" {
		t.Fatalf("ReadVersioned = %q, %v", data, err)
	}
	rec.expect(t, OpGetWithInfo, 2, nil)
	v2, err := m.PutIfMatch(ctx, "lease", strings.NewReader("v2!"), 3, oi.Version)
	if err != nil {
		t.Fatal(err)
	}
	rec.expect(t, OpPutIfMatch, 3, nil)
	if _, err := m.PutIfMatch(ctx, "lease", strings.NewReader("v3"), 2, oi.Version); !errors.Is(err, storage.ErrVersionMismatch) {
		t.Fatalf("PutIfMatch with a stale version: %v", err)
	}
	rec.expect(t, OpPutIfMatch, 0, storage.ErrVersionMismatch)
	if v2 == oi.Version || v2 == "" {
		t.Errorf("PutIfMatch through the wrapper returned version %q after %q", v2, oi.Version)
	}
	if _, _, err := m.GetWithInfo(ctx, "missing"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("GetWithInfo(missing): %v", err)
	}
	rec.expect(t, OpGetWithInfo, 0, storage.ErrNotFound)
	if OpPutIfMatch != "put_if_match" || OpGetWithInfo != "get_with_info" {
		t.Errorf("operation names %q, %q; the daemon's metrics label them so", OpPutIfMatch, OpGetWithInfo)
	}
}
